//! Decoder of pgoutput, the logical replication output plugin of PostgreSQL, protocol version 1
//! (<https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html>; the writer is
//! `src/backend/replication/logical/proto.c`). One call decodes the payload of one XLogData.
//!
//! Messages of streamed transactions (protocol 2, `streaming`) and two-phase ones (protocol 3,
//! `two_phase`) are rejected: inside a stream, changes carry an extra xid that cannot be told
//! apart without the stream's state, so slots must be read without those options. Column kind
//! `b` (the `binary` option, PostgreSQL 14+) is understood.

use bytes::Bytes;

/// A WAL position.
pub type Lsn = u64;

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `commit_time` is in microseconds since 2000-01-01 UTC; for a transaction replayed with a
    /// replication origin it is the origin's commit time.
    Begin {
        final_lsn: Lsn,
        commit_time: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    /// Sent after Begin when the transaction was made under a replication origin.
    Origin {
        commit_lsn: Lsn,
        name: String,
    },
    Relation(Relation),
    /// A user-defined type used by the next Relation; built-in types are only named by OID.
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: Tuple,
    },
    /// `old` is present when the replica identity changed (`Key`) or is FULL (`Full`).
    Update {
        relation: u32,
        old: Option<OldRow>,
        new: Tuple,
    },
    Delete {
        relation: u32,
        old: OldRow,
    },
    Truncate {
        relations: Vec<u32>,
        cascade: bool,
        restart_identity: bool,
    },
    /// `pg_logical_emit_message`; a non-transactional one arrives outside Begin/Commit.
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub oid: u32,
    /// `pg_catalog` when the server sent an empty name, as PostgreSQL's own reader does.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    Default,
    Nothing,
    Full,
    Index,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Part of the replica identity (every column under REPLICA IDENTITY FULL).
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    /// -1 when the type has none; otherwise as in `pg_attribute.atttypmod` (varchar(12) is 16).
    pub type_modifier: i32,
}

/// One value per column of the relation, in its column order.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuple(pub Vec<Value>);

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// A TOASTed value the change left alone: the server does not resend it.
    UnchangedToast,
    /// The type's text output, in the connection's client encoding.
    Text(Bytes),
    /// The type's binary send format.
    Binary(Bytes),
}

/// The old row of an Update or Delete: only the replica identity columns (`Key`, the others
/// are Null) or, under REPLICA IDENTITY FULL, all of them (`Full`).
#[derive(Debug, Clone, PartialEq)]
pub enum OldRow {
    Key(Tuple),
    Full(Tuple),
}

#[derive(Debug, thiserror::Error)]
#[error("pgoutput {message} message: {problem} (at byte {offset})")]
pub struct DecodeError {
    /// The message type, as the protocol documentation names it ("Update").
    pub message: &'static str,
    /// Where in the message the problem was found.
    pub offset: usize,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("no bytes")]
    Empty,
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    #[error("ends early, {needed} bytes needed and {available} left")]
    Truncated { needed: usize, available: usize },
    #[error("string without a terminating NUL")]
    UnterminatedString,
    #[error("string is not UTF-8")]
    InvalidUtf8,
    #[error("negative {what}: {value}")]
    Negative { what: &'static str, value: i32 },
    #[error("expected {expected}, found {found:#04x}")]
    Unexpected { expected: &'static str, found: u8 },
    #[error("{0} bytes past the end of the message")]
    TrailingBytes(usize),
}

/// Decodes one pgoutput message (the payload of one XLogData). Zero-copy: values are slices of
/// `data`.
pub fn decode(data: &Bytes) -> Result<Message, DecodeError> {
    type Body = fn(&mut Reader) -> Result<Message, DecodeError>;
    const STREAMING: &str = "streamed transactions (protocol version 2, option `streaming`)";
    const TWO_PHASE: &str = "two-phase transactions (protocol version 3, option `two_phase`)";
    let Some(&tag) = data.first() else {
        return Err(DecodeError { message: "(empty)", offset: 0, problem: Problem::Empty });
    };
    let (message, body): (&'static str, Body) = match tag {
        b'B' => ("Begin", begin),
        b'C' => ("Commit", commit),
        b'O' => ("Origin", origin),
        b'R' => ("Relation", relation),
        b'Y' => ("Type", type_),
        b'I' => ("Insert", insert),
        b'U' => ("Update", update),
        b'D' => ("Delete", delete),
        b'T' => ("Truncate", truncate),
        b'M' => ("Message", logical_message),
        _ => {
            let (message, problem) = match tag {
                b'S' => ("Stream Start", Problem::Unsupported(STREAMING)),
                b'E' => ("Stream Stop", Problem::Unsupported(STREAMING)),
                b'c' => ("Stream Commit", Problem::Unsupported(STREAMING)),
                b'A' => ("Stream Abort", Problem::Unsupported(STREAMING)),
                b'b' => ("Begin Prepare", Problem::Unsupported(TWO_PHASE)),
                b'P' => ("Prepare", Problem::Unsupported(TWO_PHASE)),
                b'K' => ("Commit Prepared", Problem::Unsupported(TWO_PHASE)),
                b'r' => ("Rollback Prepared", Problem::Unsupported(TWO_PHASE)),
                b'p' => ("Stream Prepare", Problem::Unsupported(TWO_PHASE)),
                _ => ("(unknown)", Problem::UnknownType(tag)),
            };
            return Err(DecodeError { message, offset: 0, problem });
        }
    };
    let mut reader = Reader { data, pos: 1, message };
    let decoded = body(&mut reader)?;
    match reader.remaining() {
        0 => Ok(decoded),
        n => reader.fail(reader.pos, Problem::TrailingBytes(n)),
    }
}

// The bodies below read fields inside struct expressions, which Rust evaluates in the order
// written: that order is the wire order.

fn begin(r: &mut Reader) -> Result<Message, DecodeError> {
    Ok(Message::Begin { final_lsn: r.u64()?, commit_time: r.i64()?, xid: r.u32()? })
}

fn commit(r: &mut Reader) -> Result<Message, DecodeError> {
    Ok(Message::Commit { flags: r.u8()?, commit_lsn: r.u64()?, end_lsn: r.u64()?, commit_time: r.i64()? })
}

fn origin(r: &mut Reader) -> Result<Message, DecodeError> {
    Ok(Message::Origin { commit_lsn: r.u64()?, name: r.string()? })
}

fn relation(r: &mut Reader) -> Result<Message, DecodeError> {
    let oid = r.u32()?;
    let namespace = r.namespace()?;
    let name = r.string()?;
    let at = r.pos;
    let replica_identity = match r.u8()? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        found => return r.fail(at, Problem::Unexpected { expected: "replica identity 'd', 'n', 'f' or 'i'", found }),
    };
    let count = r.count()?;
    // Each column takes at least 10 bytes: a garbage count must not reserve gigabytes.
    let mut columns = Vec::with_capacity(count.min(r.remaining() / 10));
    for _ in 0..count {
        // Flag bits other than 1 (key) are reserved.
        let key = r.u8()? & 1 != 0;
        columns.push(Column { key, name: r.string()?, type_oid: r.u32()?, type_modifier: r.i32()? });
    }
    Ok(Message::Relation(Relation { oid, namespace, name, replica_identity, columns }))
}

fn type_(r: &mut Reader) -> Result<Message, DecodeError> {
    Ok(Message::Type { oid: r.u32()?, namespace: r.namespace()?, name: r.string()? })
}

fn insert(r: &mut Reader) -> Result<Message, DecodeError> {
    let relation = r.u32()?;
    r.expect(b'N', "'N' (new tuple)")?;
    Ok(Message::Insert { relation, new: r.tuple()? })
}

fn update(r: &mut Reader) -> Result<Message, DecodeError> {
    let relation = r.u32()?;
    let at = r.pos;
    let old = match r.u8()? {
        b'N' => None,
        b'K' => Some(OldRow::Key(r.tuple()?)),
        b'O' => Some(OldRow::Full(r.tuple()?)),
        found => return r.fail(at, Problem::Unexpected { expected: "'K', 'O' (old tuple) or 'N' (new tuple)", found }),
    };
    if old.is_some() {
        r.expect(b'N', "'N' (new tuple)")?;
    }
    Ok(Message::Update { relation, old, new: r.tuple()? })
}

fn delete(r: &mut Reader) -> Result<Message, DecodeError> {
    let relation = r.u32()?;
    let at = r.pos;
    let old = match r.u8()? {
        b'K' => OldRow::Key(r.tuple()?),
        b'O' => OldRow::Full(r.tuple()?),
        found => return r.fail(at, Problem::Unexpected { expected: "'K' or 'O' (old tuple)", found }),
    };
    Ok(Message::Delete { relation, old })
}

fn truncate(r: &mut Reader) -> Result<Message, DecodeError> {
    let at = r.pos;
    let count = r.i32()?;
    let count = usize::try_from(count).or_else(|_| r.fail(at, Problem::Negative { what: "relation count", value: count }))?;
    let options = r.u8()?;
    let mut relations = Vec::with_capacity(count.min(r.remaining() / 4));
    for _ in 0..count {
        relations.push(r.u32()?);
    }
    Ok(Message::Truncate { relations, cascade: options & 1 != 0, restart_identity: options & 2 != 0 })
}

fn logical_message(r: &mut Reader) -> Result<Message, DecodeError> {
    let transactional = r.u8()? & 1 != 0;
    Ok(Message::Message { transactional, lsn: r.u64()?, prefix: r.string()?, content: r.bytes("content length")? })
}

/// Reads big-endian fields from `data[pos..]`, failing with the message's name.
struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
    message: &'static str,
}

impl Reader<'_> {
    fn fail<T>(&self, offset: usize, problem: Problem) -> Result<T, DecodeError> {
        Err(DecodeError { message: self.message, offset, problem })
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, needed: usize) -> Result<std::ops::Range<usize>, DecodeError> {
        let available = self.remaining();
        if needed > available {
            return self.fail(self.pos, Problem::Truncated { needed, available });
        }
        self.pos += needed;
        Ok(self.pos - needed..self.pos)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let range = self.take(N)?;
        let mut out = [0; N];
        out.copy_from_slice(&self.data[range]);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn expect(&mut self, tag: u8, expected: &'static str) -> Result<(), DecodeError> {
        let at = self.pos;
        match self.u8()? {
            found if found == tag => Ok(()),
            found => self.fail(at, Problem::Unexpected { expected, found }),
        }
    }

    /// A column count (int16).
    fn count(&mut self) -> Result<usize, DecodeError> {
        let at = self.pos;
        let count = i16::from_be_bytes(self.array()?);
        usize::try_from(count).or_else(|_| self.fail(at, Problem::Negative { what: "column count", value: count.into() }))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let at = self.pos;
        let Some(len) = self.data[at..].iter().position(|&b| b == 0) else {
            return self.fail(at, Problem::UnterminatedString);
        };
        let text = std::str::from_utf8(&self.data[at..at + len]).or_else(|_| self.fail(at, Problem::InvalidUtf8))?;
        self.pos += len + 1;
        Ok(text.to_owned())
    }

    /// pgoutput sends pg_catalog as an empty name.
    fn namespace(&mut self) -> Result<String, DecodeError> {
        let name = self.string()?;
        Ok(if name.is_empty() { "pg_catalog".to_owned() } else { name })
    }

    /// An int32 length and that many bytes, sliced out of the message.
    fn bytes(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let at = self.pos;
        let len = self.i32()?;
        let len = usize::try_from(len).or_else(|_| self.fail(at, Problem::Negative { what, value: len }))?;
        let range = self.take(len)?;
        Ok(self.data.slice(range))
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let count = self.count()?;
        // A value takes at least one byte.
        let mut values = Vec::with_capacity(count.min(self.remaining()));
        for _ in 0..count {
            let at = self.pos;
            values.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::UnchangedToast,
                b't' => Value::Text(self.bytes("value length")?),
                b'b' => Value::Binary(self.bytes("value length")?),
                found => return self.fail(at, Problem::Unexpected { expected: "column kind 'n', 'u', 't' or 'b'", found }),
            });
        }
        Ok(Tuple(values))
    }
}

/// "16/B374D848", as PostgreSQL prints a pg_lsn.
pub fn lsn_to_string(lsn: Lsn) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses what `lsn_to_string` (or PostgreSQL) prints: two groups of 1 to 8 hex digits.
pub fn parse_lsn(s: &str) -> Option<Lsn> {
    let half = |part: &str| match part.len() {
        1..=8 if part.bytes().all(|b| b.is_ascii_hexdigit()) => u64::from_str_radix(part, 16).ok(),
        _ => None,
    };
    let (high, low) = s.split_once('/')?;
    Some((half(high)? << 32) | half(low)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from PostgreSQL 15.18 (wal_level=logical) with
    //   select encode(data, 'hex') from pg_logical_slot_peek_binary_changes('cap', NULL, NULL,
    //       'proto_version', '1', 'publication_names', 'pub', 'messages', 'true');
    // after this setup:
    //   create type mood as enum ('sad', 'ok', 'happy');
    //   set allow_system_table_mods = on;  -- to get a pg_catalog type into a Type message
    //   create type pg_catalog.pgo_level as enum ('low', 'high');
    //   create table basic (id int primary key, name text, note text, m mood);
    //   create table full_ri (id int, v text);  alter table full_ri replica identity full;
    //   create table big (id int primary key, small text, big text);
    //   alter table big alter big set storage external;  -- out of line for sure
    //   create table parent (id serial primary key, lvl pg_catalog.pgo_level);
    //   create table child (id int primary key, pid int references parent);
    //   create table ri_idx (a int not null, b text not null, c text);
    //   create unique index ri_idx_ab on ri_idx (a, b);
    //   alter table ri_idx replica identity using index ri_idx_ab;
    //   create table ri_nothing (a int, b varchar(12));  alter table ri_nothing replica identity nothing;
    //   create publication pub for all tables;
    //   select pg_create_logical_replication_slot('cap', 'pgoutput');
    // (the ri_ tables were created after the slot, just before their statements below).
    // STREAM is every message of the slot, in order, each transaction under its SQL.
    const STREAM: &[&str] = &[
        // insert into basic values (1, 'one', null, 'happy'), (2, 'two', 'n2', null);
        BEGIN,
        TYPE_MOOD,
        RELATION_BASIC,
        INSERT,
        INSERT_NULLS,
        COMMIT,
        // update basic set name = 'uno' where id = 1;
        "42000000000197d360000303ec31000604000002f5",
        UPDATE,
        "4300000000000197d360000000000197d390000303ec31000604",
        // update basic set id = 20 where id = 2;
        "42000000000197d428000303ec310006af000002f6",
        UPDATE_KEY_CHANGE,
        "4300000000000197d428000000000197d458000303ec310006af",
        // insert into big select 1, 's', string_agg(md5(random()::text), '') from generate_series(1, 300);
        "42000000000197fdd8000303ec31000c68000002f7",
        RELATION_BIG,
        // (its Insert, with a 9,600-byte value, is left out)
        "4300000000000197fdd8000000000197fe08000303ec31000c68",
        // update big set small = 't' where id = 1;
        "42000000000197fea0000303ec31000d25000002f8",
        UPDATE_UNCHANGED_TOAST,
        "4300000000000197fea0000000000197fed0000303ec31000d25",
        // delete from basic where id = 20;
        "42000000000197ff10000303ec31000da1000002f9",
        DELETE,
        "4300000000000197ff10000000000197ff40000303ec31000da1",
        // insert into full_ri values (1, 'a'), (2, null);
        "42000000000197ffc0000303ec31000e4f000002fa",
        RELATION_FULL,
        "49000040484e0002740000000131740000000161",
        "49000040484e00027400000001326e",
        "4300000000000197ffc0000000000197fff0000303ec31000e4f",
        // update full_ri set v = 'b' where id = 1;
        "420000000001980060000303ec31000ece000002fb",
        UPDATE_FULL,
        "430000000000019800600000000001980090000303ec31000ece",
        // delete from full_ri where id = 2;
        "4200000000019800d0000303ec31000f31000002fc",
        DELETE_FULL,
        "430000000000019800d00000000001980100000303ec31000f31",
        // insert into parent (lvl) values ('high');
        "420000000001980248000303ec3100109b000002fd",
        TYPE_PG_CATALOG,
        RELATION_PARENT,
        "49000040554e0002740000000131740000000468696768",
        "430000000000019802480000000001980278000303ec3100109b",
        // insert into child values (1, 1);
        "420000000001980390000303ec310011f1000002fe",
        "520000405b7075626c6963006368696c64006400020169640000000017ffffffff007069640000000017ffffffff",
        "490000405b4e0002740000000131740000000131",
        "4300000000000198039000000000019803c0000303ec310011f1",
        // truncate parent restart identity cascade;  (TRUNCATE invalidated the cached relations:
        // both, and the type, are sent again)
        "4200000000019811e8000303ec3100147b000002ff",
        "590000403c0070676f5f6c6576656c00",
        "52000040557075626c696300706172656e74006400020169640000000017ffffffff006c766c000000403cffffffff",
        "520000405b7075626c6963006368696c64006400020169640000000017ffffffff007069640000000017ffffffff",
        TRUNCATE_CASCADE,
        "430000000000019811e80000000001981390000303ec3100147b",
        // truncate full_ri;
        "420000000001981bf0000303ec3100169500000300",
        "52000040487075626c69630066756c6c5f7269006600020169640000000017ffffffff01760000000019ffffffff",
        TRUNCATE,
        "43000000000001981bf00000000001981d00000303ec31001695",
        // begin; select pg_logical_emit_message(true, 'pgferry', 'in txn');
        // insert into basic values (3, 'three', null, 'ok'); commit;
        "420000000001981dc8000303ec3100184b00000301",
        MESSAGE_TRANSACTIONAL,
        "49000040414e0004740000000133740000000574687265656e74000000026f6b",
        "43000000000001981dc80000000001981df8000303ec3100184b",
        // select pg_logical_emit_message(false, 'pgferry.nt', '\x00ff01'::bytea);
        MESSAGE_NON_TRANSACTIONAL,
        // select pg_replication_origin_create('upstream');
        // select pg_replication_origin_session_setup('upstream');
        // begin; select pg_replication_origin_xact_setup('1/2345678', '2024-01-02 03:04:05+00');
        // insert into basic values (4, 'four', null, null); commit;
        BEGIN_ORIGIN,
        ORIGIN,
        "49000040414e00047400000001347400000004666f75726e6e",
        "4300000000000198214000000000019821880002b0ec8515f340",
        // insert into ri_idx values (1, 'x', 'c');
        "4200000000019884b0000303ec31e3aad200000309",
        RELATION_INDEX,
        "490000406f4e0003740000000131740000000178740000000163",
        "430000000000019884b000000000019884e0000303ec31e3aad2",
        // update ri_idx set b = 'y' where a = 1;
        "420000000001988578000303ec31e3ac430000030a",
        UPDATE_INDEX_KEY,
        "4300000000000198857800000000019885a8000303ec31e3ac43",
        // insert into ri_nothing values (1, 'v');
        "4200000000019885e8000303ec31e3acec0000030b",
        RELATION_NOTHING,
        "49000040754e0002740000000131740000000176",
        "430000000000019885e80000000001988618000303ec31e3acec",
        // insert into basic values (5, 'five', null, 'sad');
        "4200000000019886d8000303ec31e4f3240000030c",
        "49000040414e00047400000001357400000004666976656e7400000003736164",
        "430000000000019886d80000000001988708000303ec31e4f324",
    ];

    const BEGIN: &str = "42000000000197d2e0000303ec31000352000002f4";
    const TYPE_MOOD: &str = "59000040357075626c6963006d6f6f6400";
    const RELATION_BASIC: &str = "52000040417075626c6963006261736963006400040169640000000017ffffffff006e616d650000000019ffffffff006e6f74650000000019ffffffff006d0000004035ffffffff";
    const INSERT: &str = "49000040414e000474000000013174000000036f6e656e74000000056861707079";
    const INSERT_NULLS: &str = "49000040414e0004740000000132740000000374776f74000000026e326e";
    const COMMIT: &str = "4300000000000197d2e0000000000197d310000303ec31000352";
    const UPDATE: &str = "55000040414e00047400000001317400000003756e6f6e74000000056861707079";
    const UPDATE_KEY_CHANGE: &str = "55000040414b00047400000001326e6e6e4e000474000000023230740000000374776f74000000026e326e";
    const RELATION_BIG: &str =
        "520000404d7075626c696300626967006400030169640000000017ffffffff00736d616c6c0000000019ffffffff006269670000000019ffffffff";
    const UPDATE_UNCHANGED_TOAST: &str = "550000404d4e000374000000013174000000017475";
    const DELETE: &str = "44000040414b0004740000000232306e6e6e";
    const RELATION_FULL: &str = "52000040487075626c69630066756c6c5f7269006600020169640000000017ffffffff01760000000019ffffffff";
    const UPDATE_FULL: &str = "55000040484f00027400000001317400000001614e0002740000000131740000000162";
    const DELETE_FULL: &str = "44000040484f00027400000001326e";
    const TYPE_PG_CATALOG: &str = "590000403c0070676f5f6c6576656c00";
    const RELATION_PARENT: &str = "52000040557075626c696300706172656e74006400020169640000000017ffffffff006c766c000000403cffffffff";
    const TRUNCATE_CASCADE: &str = "540000000203000040550000405b";
    const TRUNCATE: &str = "54000000010000004048";
    const MESSAGE_TRANSACTIONAL: &str = "4d010000000001981d40706766657272790000000006696e2074786e";
    const MESSAGE_NON_TRANSACTIONAL: &str = "4d000000000001981e38706766657272792e6e74000000000300ff01";
    const BEGIN_ORIGIN: &str = "4200000000019821400002b0ec8515f34000000303";
    const ORIGIN: &str = "4f0000000102345678757073747265616d00";
    const RELATION_INDEX: &str =
        "520000406f7075626c69630072695f6964780069000301610000000017ffffffff01620000000019ffffffff00630000000019ffffffff";
    const UPDATE_INDEX_KEY: &str = "550000406f4b00037400000001317400000001786e4e0003740000000131740000000179740000000163";
    const RELATION_NOTHING: &str = "52000040757075626c69630072695f6e6f7468696e67006e000200610000000017ffffffff0062000000041300000010";
    // From a second slot read with 'binary', 'true' as well:
    //   insert into basic values (5, 'five', null, 'sad');
    const INSERT_BINARY: &str = "49000040414e00046200000004000000056200000004666976656e6200000003736164";

    const MOOD: u32 = 16437;
    const PGO_LEVEL: u32 = 16444;
    const BASIC: u32 = 16449;
    const FULL_RI: u32 = 16456;
    const BIG: u32 = 16461;
    const PARENT: u32 = 16469;
    const CHILD: u32 = 16475;
    const INT4: u32 = 23;
    const TEXT: u32 = 25;

    fn bytes(hex: &str) -> Bytes {
        Bytes::from(hex::decode(hex).unwrap())
    }

    fn decoded(hex: &str) -> Message {
        decode(&bytes(hex)).unwrap()
    }

    fn text(s: &str) -> Value {
        Value::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn column(key: bool, name: &str, type_oid: u32, type_modifier: i32) -> Column {
        Column { key, name: name.to_owned(), type_oid, type_modifier }
    }

    fn relation(oid: u32, name: &str, replica_identity: ReplicaIdentity, columns: Vec<Column>) -> Message {
        Message::Relation(Relation { oid, namespace: "public".to_owned(), name: name.to_owned(), replica_identity, columns })
    }

    #[test]
    fn begin_and_commit() {
        let commit_time = 0x0003_03ec_3100_0352;
        assert_eq!(decoded(BEGIN), Message::Begin { final_lsn: 0x197_D2E0, commit_time, xid: 756 });
        assert_eq!(decoded(COMMIT), Message::Commit { flags: 0, commit_lsn: 0x197_D2E0, end_lsn: 0x197_D310, commit_time });
    }

    #[test]
    fn type_messages() {
        let public = Message::Type { oid: MOOD, namespace: "public".to_owned(), name: "mood".to_owned() };
        assert_eq!(decoded(TYPE_MOOD), public);
        // Sent as an empty name.
        let catalog = Message::Type { oid: PGO_LEVEL, namespace: "pg_catalog".to_owned(), name: "pgo_level".to_owned() };
        assert_eq!(decoded(TYPE_PG_CATALOG), catalog);
    }

    #[test]
    fn relations() {
        let basic = vec![
            column(true, "id", INT4, -1),
            column(false, "name", TEXT, -1),
            column(false, "note", TEXT, -1),
            column(false, "m", MOOD, -1),
        ];
        assert_eq!(decoded(RELATION_BASIC), relation(BASIC, "basic", ReplicaIdentity::Default, basic));
        let big = vec![column(true, "id", INT4, -1), column(false, "small", TEXT, -1), column(false, "big", TEXT, -1)];
        assert_eq!(decoded(RELATION_BIG), relation(BIG, "big", ReplicaIdentity::Default, big));
        let full = vec![column(true, "id", INT4, -1), column(true, "v", TEXT, -1)];
        assert_eq!(decoded(RELATION_FULL), relation(FULL_RI, "full_ri", ReplicaIdentity::Full, full));
        let parent = vec![column(true, "id", INT4, -1), column(false, "lvl", PGO_LEVEL, -1)];
        assert_eq!(decoded(RELATION_PARENT), relation(PARENT, "parent", ReplicaIdentity::Default, parent));
        let index = vec![column(true, "a", INT4, -1), column(true, "b", TEXT, -1), column(false, "c", TEXT, -1)];
        assert_eq!(decoded(RELATION_INDEX), relation(16495, "ri_idx", ReplicaIdentity::Index, index));
        let nothing = vec![column(false, "a", INT4, -1), column(false, "b", 1043, 16)];
        assert_eq!(decoded(RELATION_NOTHING), relation(16501, "ri_nothing", ReplicaIdentity::Nothing, nothing));
    }

    #[test]
    fn inserts() {
        let new = Tuple(vec![text("1"), text("one"), Value::Null, text("happy")]);
        assert_eq!(decoded(INSERT), Message::Insert { relation: BASIC, new });
        let new = Tuple(vec![text("2"), text("two"), text("n2"), Value::Null]);
        assert_eq!(decoded(INSERT_NULLS), Message::Insert { relation: BASIC, new });
        let binary = |b: &[u8]| Value::Binary(Bytes::copy_from_slice(b));
        let new = Tuple(vec![binary(&[0, 0, 0, 5]), binary(b"five"), Value::Null, binary(b"sad")]);
        assert_eq!(decoded(INSERT_BINARY), Message::Insert { relation: BASIC, new });
    }

    #[test]
    fn values_are_slices_of_the_message() {
        let data = bytes(INSERT);
        let Ok(Message::Insert { new, .. }) = decode(&data) else { panic!("not an Insert") };
        let Value::Text(one) = &new.0[1] else { panic!("not text") };
        assert!(data.as_ptr_range().contains(&one.as_ptr()));
    }

    #[test]
    fn updates() {
        let new = Tuple(vec![text("1"), text("uno"), Value::Null, text("happy")]);
        assert_eq!(decoded(UPDATE), Message::Update { relation: BASIC, old: None, new });

        let old = Some(OldRow::Key(Tuple(vec![text("2"), Value::Null, Value::Null, Value::Null])));
        let new = Tuple(vec![text("20"), text("two"), text("n2"), Value::Null]);
        assert_eq!(decoded(UPDATE_KEY_CHANGE), Message::Update { relation: BASIC, old, new });

        let new = Tuple(vec![text("1"), text("t"), Value::UnchangedToast]);
        assert_eq!(decoded(UPDATE_UNCHANGED_TOAST), Message::Update { relation: BIG, old: None, new });

        let old = Some(OldRow::Full(Tuple(vec![text("1"), text("a")])));
        let new = Tuple(vec![text("1"), text("b")]);
        assert_eq!(decoded(UPDATE_FULL), Message::Update { relation: FULL_RI, old, new });

        let old = Some(OldRow::Key(Tuple(vec![text("1"), text("x"), Value::Null])));
        let new = Tuple(vec![text("1"), text("y"), text("c")]);
        assert_eq!(decoded(UPDATE_INDEX_KEY), Message::Update { relation: 16495, old, new });
    }

    #[test]
    fn deletes() {
        let old = OldRow::Key(Tuple(vec![text("20"), Value::Null, Value::Null, Value::Null]));
        assert_eq!(decoded(DELETE), Message::Delete { relation: BASIC, old });
        let old = OldRow::Full(Tuple(vec![text("2"), Value::Null]));
        assert_eq!(decoded(DELETE_FULL), Message::Delete { relation: FULL_RI, old });
    }

    #[test]
    fn truncates() {
        let cascade = Message::Truncate { relations: vec![PARENT, CHILD], cascade: true, restart_identity: true };
        assert_eq!(decoded(TRUNCATE_CASCADE), cascade);
        let plain = Message::Truncate { relations: vec![FULL_RI], cascade: false, restart_identity: false };
        assert_eq!(decoded(TRUNCATE), plain);
    }

    #[test]
    fn logical_messages() {
        let content = Bytes::from_static(b"in txn");
        let transactional = Message::Message { transactional: true, lsn: 0x198_1D40, prefix: "pgferry".to_owned(), content };
        assert_eq!(decoded(MESSAGE_TRANSACTIONAL), transactional);
        let content = Bytes::from_static(&[0, 0xff, 1]);
        let other = Message::Message { transactional: false, lsn: 0x198_1E38, prefix: "pgferry.nt".to_owned(), content };
        assert_eq!(decoded(MESSAGE_NON_TRANSACTIONAL), other);
    }

    #[test]
    fn origin() {
        assert_eq!(decoded(ORIGIN), Message::Origin { commit_lsn: 0x1_0234_5678, name: "upstream".to_owned() });
        // The commit time is the one given to pg_replication_origin_xact_setup.
        let Message::Begin { commit_time, .. } = decoded(BEGIN_ORIGIN) else { panic!("not a Begin") };
        assert_eq!(commit_time, 757_479_845_000_000);
    }

    /// Every captured message decodes, and the stream holds together: transactions pair up,
    /// changes come inside them and fit the columns of a Relation sent before.
    #[test]
    fn whole_stream() {
        let mut columns = std::collections::HashMap::new();
        let mut open = None;
        let fits = |columns: &std::collections::HashMap<u32, usize>, relation: &u32, tuple: &Tuple| {
            assert_eq!(columns.get(relation), Some(&tuple.0.len()), "relation {relation}");
        };
        for hex in STREAM {
            let message = decoded(hex);
            assert_eq!(
                open.is_some(),
                !matches!(message, Message::Begin { .. } | Message::Message { transactional: false, .. }),
                "{message:?}"
            );
            match &message {
                Message::Begin { final_lsn, commit_time, .. } => open = Some((*final_lsn, *commit_time)),
                Message::Commit { flags, commit_lsn, commit_time, .. } => {
                    assert_eq!((*flags, open.take()), (0, Some((*commit_lsn, *commit_time))));
                }
                Message::Relation(r) => {
                    columns.insert(r.oid, r.columns.len());
                }
                Message::Insert { relation, new } => fits(&columns, relation, new),
                Message::Update { relation, old, new } => {
                    if let Some(OldRow::Key(old) | OldRow::Full(old)) = old {
                        fits(&columns, relation, old);
                    }
                    fits(&columns, relation, new);
                }
                Message::Delete { relation, old: OldRow::Key(old) | OldRow::Full(old) } => fits(&columns, relation, old),
                Message::Truncate { relations, .. } => assert!(relations.iter().all(|r| columns.contains_key(r))),
                Message::Origin { .. } | Message::Type { .. } | Message::Message { .. } => {}
            }
        }
        assert_eq!(open, None);
    }

    #[test]
    fn damaged_messages_are_errors_never_panics() {
        for hex in STREAM.iter().chain([&INSERT_BINARY]) {
            let data = bytes(hex);
            for len in 0..data.len() {
                let err = decode(&data.slice(..len)).unwrap_err();
                assert!(err.offset <= len, "{hex} cut at {len}: {err}");
            }
            let mut longer = data.to_vec();
            longer.push(0);
            let err = decode(&Bytes::from(longer)).unwrap_err();
            assert_eq!((err.offset, err.problem), (data.len(), Problem::TrailingBytes(1)));
            for at in 0..data.len() {
                for byte in [0x00, 0x01, 0x7f, 0x80, 0xff, b'n', b't', b'K', b'N'] {
                    let mut changed = data.to_vec();
                    changed[at] = byte;
                    let _ = decode(&Bytes::from(changed));
                }
            }
        }
    }

    #[test]
    fn errors_name_the_message_the_offset_and_the_problem() {
        let problem = |hex: &str| {
            let err = decode(&bytes(hex)).unwrap_err();
            (err.message, err.offset, err.problem)
        };
        let err = decode(&bytes("55000040415800")).unwrap_err();
        assert_eq!(err.to_string(), "pgoutput Update message: expected 'K', 'O' (old tuple) or 'N' (new tuple), found 0x58 (at byte 5)");
        assert_eq!(problem(""), ("(empty)", 0, Problem::Empty));
        assert_eq!(problem("7a"), ("(unknown)", 0, Problem::UnknownType(b'z')));
        assert!(matches!(problem("530000000101"), ("Stream Start", 0, Problem::Unsupported(_))));
        assert!(matches!(problem("500000"), ("Prepare", 0, Problem::Unsupported(_))));
        assert_eq!(problem("4200"), ("Begin", 1, Problem::Truncated { needed: 8, available: 1 }));
        // Insert whose tuple claims -1 columns; then one whose text value claims -1 bytes.
        assert_eq!(problem("49000040414effff"), ("Insert", 6, Problem::Negative { what: "column count", value: -1 }));
        assert_eq!(problem("49000040414e000174ffffffff"), ("Insert", 9, Problem::Negative { what: "value length", value: -1 }));
        assert_eq!(
            problem("49000040414e00017a"),
            ("Insert", 8, Problem::Unexpected { expected: "column kind 'n', 'u', 't' or 'b'", found: b'z' })
        );
        assert_eq!(problem("4900004041"), ("Insert", 5, Problem::Truncated { needed: 1, available: 0 }));
        // Type whose name is not UTF-8, then one with no NUL after it.
        assert_eq!(problem("590000403500ff00"), ("Type", 6, Problem::InvalidUtf8));
        assert_eq!(problem("5900004035006d6f6f64"), ("Type", 6, Problem::UnterminatedString));
        assert_eq!(problem("44000040414e0000"), ("Delete", 5, Problem::Unexpected { expected: "'K' or 'O' (old tuple)", found: b'N' }));
        // A relation count far beyond the bytes there: no giant allocation, just an error.
        assert_eq!(problem("547fffffff0000000001"), ("Truncate", 10, Problem::Truncated { needed: 4, available: 0 }));
        assert_eq!(problem("54ffffffff00"), ("Truncate", 1, Problem::Negative { what: "relation count", value: -1 }));
        assert_eq!(
            problem("52000040417075626c696300620078"),
            ("Relation", 14, Problem::Unexpected { expected: "replica identity 'd', 'n', 'f' or 'i'", found: b'x' })
        );
    }

    #[test]
    fn lsn_text() {
        assert_eq!(lsn_to_string(0x16_B374_D848), "16/B374D848");
        assert_eq!(lsn_to_string(0), "0/0");
        assert_eq!(lsn_to_string(u64::MAX), "FFFFFFFF/FFFFFFFF");
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/197d310"), Some(0x197_D310));
        assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF"), Some(u64::MAX));
        for bad in ["", "1", "/1", "1/", "1/2/3", "123456789/0", "0/123456789", "+1/2", "1/-2", " 1/2", "1/2 ", "g/0"] {
            assert_eq!(parse_lsn(bad), None, "{bad:?}");
        }
    }
}
