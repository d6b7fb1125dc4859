//! Order-independent digests of COPY streams: what verification compares.
//!
//! A digest is the number of rows and the wrapping sum of every row's xxh3-64 hash, the row
//! being its bytes in the COPY stream (binary: the whole tuple, field count and lengths
//! included, so NULL and empty differ; text: the line without its newline). The sum does
//! not depend on the order the rows come in, and digests of parts of a table add up to the
//! table's. The source's digest is taken from the bytes the copy streams anyway; the
//! target's from a `COPY (SELECT <the same columns>) TO STDOUT` in the same format.
//!
//! The parser takes the stream in chunks split anywhere (a row may span chunks, and so may
//! a field's length word): rows within a chunk are hashed in one pass; a row that spans
//! chunks goes through xxh3's streaming state, which gives the same hash.

use anyhow::{bail, Result};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// Rows and the wrapping sum of their hashes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digest {
    pub rows: u64,
    pub sum: u64,
}

impl Digest {
    /// The digest of two disjoint sets of rows (the parts of a split table).
    pub fn combine(self, other: Digest) -> Digest {
        Digest { rows: self.rows + other.rows, sum: self.sum.wrapping_add(other.sum) }
    }

    fn add(&mut self, hash: u64) {
        self.rows += 1;
        self.sum = self.sum.wrapping_add(hash);
    }

    /// The sum as 16 hex digits (what `show` prints and the resume record keeps).
    pub fn hex(&self) -> String {
        format!("{:016x}", self.sum)
    }
}

/// The resume record keeps the sum as hex: a JSON reader that turns numbers into doubles
/// would lose a u64's low bits.
impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Digest", 2)?;
        st.serialize_field("rows", &self.rows)?;
        st.serialize_field("sum", &self.hex())?;
        st.end()
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        struct Raw {
            rows: u64,
            sum: String,
        }
        let raw = Raw::deserialize(d)?;
        let sum = u64::from_str_radix(&raw.sum, 16).map_err(serde::de::Error::custom)?;
        Ok(Digest { rows: raw.rows, sum })
    }
}

/// The COPY format of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Binary,
    Text,
}

impl Format {
    /// As COPY's `FORMAT` option spells it.
    pub fn sql(self) -> &'static str {
        match self {
            Format::Binary => "binary",
            Format::Text => "text",
        }
    }
}

/// `PGCOPY\n\377\r\n\0`: the start of every binary COPY stream.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Signature, flags (int32), header extension length (int32).
const HEADER: usize = 19;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Binary: the fixed header, `HEADER` bytes (gathered in `small`).
    Header,
    /// Binary: skipping the header extension area.
    Extension { left: u32 },
    /// Binary: at a tuple's field count (int16; -1 is the trailer). Text: at a line.
    RowStart,
    /// Binary, inside a tuple that spans chunks: at a field's length (int32).
    FieldLength { fields_left: u16 },
    /// Binary, inside a tuple that spans chunks: in a field's bytes.
    FieldData { fields_left: u16, left: u32 },
    /// Text, inside a line that spans chunks.
    Line,
    /// Binary: after the trailer; nothing may follow.
    Done,
}

/// Digests one COPY stream fed in arbitrary chunks.
pub struct CopyDigester {
    format: Format,
    state: State,
    digest: Digest,
    /// A row that spans chunks, hashed as it comes.
    hasher: Box<Xxh3>,
    /// Bytes of a header, field count or length word that spans chunks.
    small: Vec<u8>,
}

impl CopyDigester {
    pub fn new(format: Format) -> Self {
        let state = match format {
            Format::Binary => State::Header,
            Format::Text => State::RowStart,
        };
        CopyDigester { format, state, digest: Digest::default(), hasher: Box::new(Xxh3::new()), small: Vec::with_capacity(HEADER) }
    }

    /// Rows complete so far.
    pub fn rows(&self) -> u64 {
        self.digest.rows
    }

    /// The digest of the whole stream; fails when it ended inside a row (or, binary, before
    /// its trailer).
    pub fn finish(self) -> Result<Digest> {
        match (self.format, self.state) {
            (Format::Text, State::RowStart) | (Format::Binary, State::Done) => Ok(self.digest),
            (Format::Binary, State::Header | State::Extension { .. }) => bail!("the binary COPY stream ended inside its header"),
            (Format::Binary, State::RowStart) if self.small.is_empty() => bail!("the binary COPY stream ended without its trailer"),
            _ => bail!("the COPY stream ended inside a row (after {} complete rows)", self.digest.rows),
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) -> Result<()> {
        match self.format {
            Format::Binary => self.feed_binary(chunk),
            Format::Text => {
                self.feed_text(chunk);
                Ok(())
            }
        }
    }

    fn feed_text(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let newline = rest.iter().position(|&b| b == b'\n');
            match (self.state, newline) {
                (State::RowStart, Some(end)) => self.digest.add(xxh3_64(&rest[..end])),
                (State::Line, Some(end)) => {
                    self.hasher.update(&rest[..end]);
                    self.digest.add(self.hasher.digest());
                    self.state = State::RowStart;
                }
                (_, None) => {
                    if self.state == State::RowStart {
                        self.hasher.reset();
                        self.state = State::Line;
                    }
                    self.hasher.update(rest);
                    return;
                }
                _ => unreachable!("text streams are at a line or inside one"),
            }
            rest = &rest[newline.unwrap_or(rest.len()) + 1..];
        }
    }

    /// Takes bytes into `small` until it holds `want`; whether it does now.
    fn gather(&mut self, rest: &mut &[u8], want: usize) -> bool {
        let take = (want - self.small.len()).min(rest.len());
        self.small.extend_from_slice(&rest[..take]);
        *rest = &rest[take..];
        self.small.len() == want
    }

    fn feed_binary(&mut self, chunk: &[u8]) -> Result<()> {
        let mut rest = chunk;
        while !rest.is_empty() {
            match self.state {
                State::Header => {
                    if !self.gather(&mut rest, HEADER) {
                        return Ok(());
                    }
                    if &self.small[..11] != SIGNATURE {
                        bail!("the binary COPY stream does not start with PostgreSQL's signature");
                    }
                    let extension = u32::from_be_bytes(self.small[15..19].try_into().expect("4 bytes"));
                    self.small.clear();
                    self.state = if extension == 0 { State::RowStart } else { State::Extension { left: extension } };
                }
                State::Extension { left } => {
                    let take = (left as usize).min(rest.len());
                    rest = &rest[take..];
                    let left = left - take as u32;
                    self.state = if left == 0 { State::RowStart } else { State::Extension { left } };
                }
                State::RowStart => {
                    if self.small.is_empty() {
                        // The common case: whole tuples within the chunk, hashed in one go.
                        if let Some(len) = tuple_len(rest)? {
                            if len == 2 && rest[..2] == [0xff, 0xff] {
                                self.state = State::Done;
                                rest = &rest[2..];
                                continue;
                            }
                            self.digest.add(xxh3_64(&rest[..len]));
                            rest = &rest[len..];
                            continue;
                        }
                        self.hasher.reset();
                    }
                    if !self.gather(&mut rest, 2) {
                        return Ok(());
                    }
                    let count = i16::from_be_bytes([self.small[0], self.small[1]]);
                    self.small.clear();
                    if count == -1 {
                        // Only a whole trailer reaches here split (a tuple_len of 2).
                        self.state = State::Done;
                        continue;
                    }
                    let fields = u16::try_from(count).map_err(|_| anyhow::anyhow!("the binary COPY stream has a tuple of {count} fields"))?;
                    self.hasher.update(&count.to_be_bytes());
                    self.state = State::FieldLength { fields_left: fields };
                    self.end_tuple_if_complete();
                }
                State::FieldLength { fields_left } => {
                    if !self.gather(&mut rest, 4) {
                        return Ok(());
                    }
                    let len = i32::from_be_bytes(self.small[..4].try_into().expect("4 bytes"));
                    self.hasher.update(&self.small);
                    self.small.clear();
                    let fields_left = fields_left - 1;
                    self.state = match len {
                        -1 | 0 => State::FieldLength { fields_left },
                        1.. => State::FieldData { fields_left, left: len as u32 },
                        _ => bail!("the binary COPY stream has a field of length {len}"),
                    };
                    self.end_tuple_if_complete();
                }
                State::FieldData { fields_left, left } => {
                    let take = (left as usize).min(rest.len());
                    self.hasher.update(&rest[..take]);
                    rest = &rest[take..];
                    let left = left - take as u32;
                    self.state = if left == 0 { State::FieldLength { fields_left } } else { State::FieldData { fields_left, left } };
                    self.end_tuple_if_complete();
                }
                State::Done => bail!("the binary COPY stream has {} bytes after its trailer", rest.len()),
                State::Line => unreachable!("a text state in a binary stream"),
            }
        }
        Ok(())
    }

    /// A tuple that spans chunks ends when no field is left to read.
    fn end_tuple_if_complete(&mut self) {
        if self.state == (State::FieldLength { fields_left: 0 }) {
            self.digest.add(self.hasher.digest());
            self.state = State::RowStart;
        }
    }
}

/// The length of the binary tuple (or trailer) at the start of `buf` when `buf` holds all
/// of it; `None` when it goes on past `buf`.
fn tuple_len(buf: &[u8]) -> Result<Option<usize>> {
    let Some(count) = buf.get(..2) else { return Ok(None) };
    let count = i16::from_be_bytes([count[0], count[1]]);
    if count == -1 {
        return Ok(Some(2));
    }
    if count < 0 {
        bail!("the binary COPY stream has a tuple of {count} fields");
    }
    let mut at = 2usize;
    for _ in 0..count {
        let Some(len) = buf.get(at..at + 4) else { return Ok(None) };
        let len = i32::from_be_bytes(len.try_into().expect("4 bytes"));
        at += 4;
        match len {
            -1 => {}
            0.. => at += len as usize,
            _ => bail!("the binary COPY stream has a field of length {len}"),
        }
        if at > buf.len() {
            return Ok(None);
        }
    }
    Ok(Some(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary COPY stream of `rows` (None: NULL), with a header extension of `ext` bytes.
    fn binary_stream(rows: &[Vec<Option<&[u8]>>], ext: usize) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&(ext as u32).to_be_bytes());
        out.extend(std::iter::repeat_n(0xab, ext));
        for row in rows {
            out.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for field in row {
                match field {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(bytes) => {
                        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                        out.extend_from_slice(bytes);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn sample_rows() -> Vec<Vec<Option<&'static [u8]>>> {
        vec![
            vec![Some(b"\x00\x00\x00\x01"), Some(b"alpha"), None],
            vec![Some(b"\x00\x00\x00\x02"), Some(b""), Some(b"x")],
            vec![],
            vec![Some(&[7u8; 300]), None, None],
            vec![Some(b"\x00\x00\x00\x03"), Some(b"gamma"), Some(b"\xff\xff")],
            // Ends in an empty field: a split right after its length word ends the tuple.
            vec![Some(b"z"), Some(b"")],
        ]
    }

    fn digest_in_chunks(format: Format, stream: &[u8], cuts: &[usize]) -> Result<Digest> {
        let mut d = CopyDigester::new(format);
        let mut from = 0;
        for &cut in cuts.iter().chain([stream.len()].iter()) {
            let cut = cut.clamp(from, stream.len());
            d.feed(&stream[from..cut])?;
            from = cut;
        }
        d.finish()
    }

    /// A small deterministic generator for the split points (no dependency for it).
    fn splits(seed: u64, len: usize, n: usize) -> Vec<usize> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut cuts: Vec<usize> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % (len as u64 + 1)) as usize
            })
            .collect();
        cuts.sort_unstable();
        cuts
    }

    #[test]
    fn binary_digest_is_the_same_however_the_stream_is_split() {
        for ext in [0, 5] {
            let stream = binary_stream(&sample_rows(), ext);
            let whole = digest_in_chunks(Format::Binary, &stream, &[]).unwrap();
            assert_eq!(whole.rows, 6);
            // Every single cut point, every pair of adjacent cuts, and byte-by-byte.
            for cut in 0..=stream.len() {
                assert_eq!(digest_in_chunks(Format::Binary, &stream, &[cut]).unwrap(), whole, "cut at {cut}");
                assert_eq!(digest_in_chunks(Format::Binary, &stream, &[cut, cut + 1]).unwrap(), whole, "cuts at {cut}, {}", cut + 1);
            }
            let every_byte: Vec<usize> = (1..stream.len()).collect();
            assert_eq!(digest_in_chunks(Format::Binary, &stream, &every_byte).unwrap(), whole);
            for seed in 0..200 {
                let cuts = splits(seed, stream.len(), 1 + seed as usize % 12);
                assert_eq!(digest_in_chunks(Format::Binary, &stream, &cuts).unwrap(), whole, "cuts {cuts:?}");
            }
        }
    }

    #[test]
    fn binary_row_hash_is_xxh3_of_the_tuple_bytes() {
        let rows = vec![vec![Some(&b"ab"[..]), None]];
        let stream = binary_stream(&rows, 0);
        let tuple = &stream[HEADER..stream.len() - 2];
        assert_eq!(tuple, b"\x00\x02\x00\x00\x00\x02ab\xff\xff\xff\xff");
        let d = digest_in_chunks(Format::Binary, &stream, &[HEADER + 3]).unwrap();
        assert_eq!(d, Digest { rows: 1, sum: xxh3_64(tuple) });
    }

    #[test]
    fn binary_digest_is_independent_of_row_order_and_parts_add_up() {
        let rows = sample_rows();
        let mut reversed = rows.clone();
        reversed.reverse();
        let forward = digest_in_chunks(Format::Binary, &binary_stream(&rows, 0), &[]).unwrap();
        assert_eq!(digest_in_chunks(Format::Binary, &binary_stream(&reversed, 0), &[]).unwrap(), forward);
        let first = digest_in_chunks(Format::Binary, &binary_stream(&rows[..2], 0), &[]).unwrap();
        let second = digest_in_chunks(Format::Binary, &binary_stream(&rows[2..], 0), &[]).unwrap();
        assert_eq!(first.combine(second), forward);
    }

    #[test]
    fn binary_digest_detects_a_changed_missing_extra_or_null_row() {
        let rows = sample_rows();
        let base = digest_in_chunks(Format::Binary, &binary_stream(&rows, 0), &[]).unwrap();
        let mut changed = rows.clone();
        changed[0][1] = Some(b"alphb");
        let mut nulled = rows.clone();
        nulled[1][1] = None; // '' became NULL: same data bytes, different tuple
        let mut missing = rows.clone();
        missing.pop();
        let mut extra = rows.clone();
        extra.push(rows[0].clone()); // a duplicate row
        for (what, other) in [("changed", changed), ("nulled", nulled), ("missing", missing), ("extra", extra)] {
            let d = digest_in_chunks(Format::Binary, &binary_stream(&other, 0), &[]).unwrap();
            assert_ne!(d, base, "{what}");
        }
        // Two rows swapping a value between them: the sum sees each row whole.
        let a = vec![vec![Some(&b"1"[..]), Some(&b"x"[..])], vec![Some(&b"2"[..]), Some(&b"y"[..])]];
        let b = vec![vec![Some(&b"1"[..]), Some(&b"y"[..])], vec![Some(&b"2"[..]), Some(&b"x"[..])]];
        assert_ne!(digest_in_chunks(Format::Binary, &binary_stream(&a, 0), &[]).unwrap(), digest_in_chunks(Format::Binary, &binary_stream(&b, 0), &[]).unwrap());
    }

    #[test]
    fn truncated_or_malformed_binary_streams_are_errors() {
        let stream = binary_stream(&sample_rows(), 0);
        for end in [0, 5, HEADER, HEADER + 1, HEADER + 7, stream.len() - 2, stream.len() - 1] {
            let err = digest_in_chunks(Format::Binary, &stream[..end], &[end / 2]).unwrap_err().to_string();
            assert!(err.contains("ended"), "end {end}: {err}");
        }
        let mut bad = stream.clone();
        bad[0] = b'X';
        assert!(digest_in_chunks(Format::Binary, &bad, &[]).unwrap_err().to_string().contains("signature"));
        let mut after = stream.clone();
        after.push(0);
        assert!(digest_in_chunks(Format::Binary, &after, &[]).unwrap_err().to_string().contains("after its trailer"));
        let mut negative = stream[..HEADER].to_vec();
        negative.extend_from_slice(b"\x00\x01\xff\xff\xff\xfe");
        assert!(digest_in_chunks(Format::Binary, &negative, &[]).unwrap_err().to_string().contains("length -2"));
    }

    #[test]
    fn text_digest_is_the_same_however_the_stream_is_split() {
        let stream = b"1\talpha\t\\N\n2\t\t\\\\n\n\n3\tgamma with a longer line than the others\t{1,2}\n".to_vec();
        let whole = digest_in_chunks(Format::Text, &stream, &[]).unwrap();
        assert_eq!(whole.rows, 4);
        assert_eq!(whole.sum, ["1\talpha\t\\N", "2\t\t\\\\n", "", "3\tgamma with a longer line than the others\t{1,2}"].iter().fold(0u64, |s, l| s.wrapping_add(xxh3_64(l.as_bytes()))));
        for cut in 0..=stream.len() {
            assert_eq!(digest_in_chunks(Format::Text, &stream, &[cut]).unwrap(), whole, "cut at {cut}");
        }
        let every_byte: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(digest_in_chunks(Format::Text, &stream, &every_byte).unwrap(), whole);
        for seed in 0..100 {
            let cuts = splits(seed, stream.len(), 1 + seed as usize % 8);
            assert_eq!(digest_in_chunks(Format::Text, &stream, &cuts).unwrap(), whole, "cuts {cuts:?}");
        }
        let changed = b"1\talpha\t\\N\n2\t\t\\\\n\n\n3\tgamma with a longer line than the others\t{1,3}\n";
        assert_ne!(digest_in_chunks(Format::Text, changed, &[]).unwrap(), whole);
        let err = digest_in_chunks(Format::Text, &stream[..stream.len() - 1], &[10]).unwrap_err().to_string();
        assert!(err.contains("inside a row (after 3 complete rows)"), "{err}");
    }

    #[test]
    fn digests_round_trip_through_the_resume_record() {
        let d = Digest { rows: 3, sum: u64::MAX - 1 };
        let json = serde_json::to_value(d).unwrap();
        assert_eq!(json, serde_json::json!({"rows": 3, "sum": "fffffffffffffffe"}));
        assert_eq!(serde_json::from_value::<Digest>(json).unwrap(), d);
    }
}
