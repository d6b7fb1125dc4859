//! Host-side bindings of contract 0.1.0. The inventory types double as the runner's own
//! inventory model, so they also derive serde (an inventory dump is an SDK test fixture).

wasmtime::component::bindgen!({
    path: "../wit/since_v0.1.0",
    world: "validation-rule",
    imports: { default: async },
    exports: { default: async },
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
});

pub mod adapter {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.1.0",
        world: "source-adapter",
        imports: { default: async },
        exports: { default: async },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        with: {
            "pgferry:plugin/types": super::pgferry::plugin::types,
            "pgferry:plugin/host": super::pgferry::plugin::host,
        },
    });
}

pub use adapter::exports::pgferry::plugin::adapter::{AdapterInfo, ConnectionDetails, ProviderObjectNames};
pub use exports::pgferry::plugin::rules::RuleDescriptor;
pub use pgferry::plugin::host::{LogLevel, QueryResult};
pub use pgferry::plugin::types::*;
