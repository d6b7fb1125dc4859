//! Embeds the built-in plugins listed in plugins/builtin.txt (the runner's own code names
//! none of them: which sources exist is the plugins' business).

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let list = root.join("plugins").join("builtin.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    let text = std::fs::read_to_string(&list).unwrap_or_else(|e| panic!("{}: {e}", list.display()));
    let mut out = String::from("&[\n");
    for name in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let wasm = root.join("plugins").join("dist").join(format!("{name}.wasm"));
        let wasm = wasm.canonicalize().unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask build-plugins`", wasm.display()));
        // include_bytes! makes cargo rebuild when the file changes.
        out.push_str(&format!("    ({name:?}, include_bytes!({:?}).as_slice()),\n", wasm.display().to_string()));
    }
    out.push_str("]\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("builtin.rs");
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("{}: {e}", dest.display()));
}
