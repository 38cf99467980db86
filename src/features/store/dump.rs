//! Redis `DUMP` payloads built on the client, so a backfill writes a
//! never-seen entity's keys with one `RESTORE` each (`restore.lua`) instead of
//! field-by-field `HSET`/`ZADD`s: Redis copies a listpack instead of parsing
//! and inserting every field, 4–20× less Redis CPU per key (benches/RESULTS.md).
//!
//! A payload is `type byte, value, RDB version (u16 LE), CRC-64 (u64 LE)` —
//! the format Redis' own `DUMP` produces. Values within the server's
//! `hash-max-listpack-*` / `zset-max-listpack-*` settings ([`Limits`]; by
//! default ≤ 512 hash fields or 128 set members, of ≤ 64 bytes) use the
//! listpack types Redis itself uses for them; larger ones the plain `hash`
//! / `zset` types. Either way Redis re-encodes by its own settings while
//! loading if they differ, so the limits only decide speed: a listpack is
//! copied, a plain value inserted entry by entry (benches/RESULTS.md: the
//! item dedupe sets of a first load, ~250 ids each, as skiplists). Listpack
//! types need RDB version 10, i.e. Redis ≥ 7.0; the store probes once and
//! falls back to `update.lua` on older servers.

use crc::{Crc, Table, CRC_64_REDIS};

/// RDB format version written (Redis 7.0; later versions read it).
const RDB_VERSION: u16 = 10;
const TYPE_STRING: u8 = 0;
const TYPE_HASH: u8 = 4;
const TYPE_ZSET_2: u8 = 5;
const TYPE_HASH_LISTPACK: u8 = 16;
const TYPE_ZSET_LISTPACK: u8 = 17;

/// The largest hashes and sorted sets the server keeps as listpacks: its
/// `hash-max-listpack-entries`/`-value` and `zset-max-listpack-entries`/
/// `-value` settings. The default is Redis' own (7.x: hashes 512 entries,
/// sorted sets 128, both 64-byte values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub hash_entries: usize,
    pub hash_value: usize,
    pub zset_entries: usize,
    pub zset_value: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            hash_entries: 512,
            hash_value: 64,
            zset_entries: 128,
            zset_value: 64,
        }
    }
}

/// Slice-by-16 (32 KB of tables) rather than byte at a time: the checksum
/// was ~7 % of a backfill process' CPU (benches/RESULTS.md).
const CRC64: Crc<u64, Table<16>> = Crc::<u64, Table<16>>::new(&CRC_64_REDIS);

/// The payload of a string holding `bytes`.
pub fn string(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + bytes.len());
    out.push(TYPE_STRING);
    rdb_string(&mut out, bytes);
    footer(out)
}

/// The payload of a hash with `fields` (field, value), in this order.
/// Field names must be distinct (Redis does not check by default).
pub fn hash<F: AsRef<[u8]>, V: AsRef<[u8]>>(fields: &[(F, V)], limits: &Limits) -> Vec<u8> {
    let small = fields.len() <= limits.hash_entries
        && fields.iter().all(|(f, v)| {
            f.as_ref().len() <= limits.hash_value && v.as_ref().len() <= limits.hash_value
        });
    let mut out = Vec::with_capacity(64 + fields.len() * 24);
    if small {
        out.push(TYPE_HASH_LISTPACK);
        let mut lp = Listpack::with_capacity(fields.len() * 2);
        for (f, v) in fields {
            lp.push(f.as_ref());
            lp.push(v.as_ref());
        }
        rdb_string(&mut out, &lp.finish());
    } else {
        out.push(TYPE_HASH);
        rdb_len(&mut out, fields.len() as u64);
        for (f, v) in fields {
            rdb_string(&mut out, f.as_ref());
            rdb_string(&mut out, v.as_ref());
        }
    }
    footer(out)
}

/// The payload of a sorted set of `(member, score)`; members must be
/// distinct. Scores are integers (event times, in ms), exact in an `f64`
/// up to 2^53. Sorted in place: small sets into Redis' listpack order
/// (score, then member bytes), larger ones the other way round.
pub fn zset<M: AsRef<[u8]>>(members: &mut [(M, i64)], limits: &Limits) -> Vec<u8> {
    let mut num = itoa::Buffer::new();
    zset_of(
        members,
        limits,
        i64::cmp,
        |s, out| out.extend_from_slice(num.format(s).as_bytes()),
        |s| s as f64,
    )
}

/// [`zset`] with any finite scores (the listpack keeps each as the
/// shortest text that reads back to it, which Redis parses as it parses
/// its own).
pub fn zset_scores<M: AsRef<[u8]>>(members: &mut [(M, f64)], limits: &Limits) -> Vec<u8> {
    use std::io::Write;
    zset_of(
        members,
        limits,
        f64::total_cmp,
        |s, out| {
            let _ = write!(out, "{s:e}");
        },
        |s| s,
    )
}

/// A sorted set's payload: `cmp` orders scores, `text` writes one as a
/// listpack entry, `float` gives the plain type's binary score.
fn zset_of<M: AsRef<[u8]>, S: Copy>(
    members: &mut [(M, S)],
    limits: &Limits,
    cmp: impl Fn(&S, &S) -> std::cmp::Ordering,
    mut text: impl FnMut(S, &mut Vec<u8>),
    float: impl Fn(S) -> f64,
) -> Vec<u8> {
    let small = members.len() <= limits.zset_entries
        && members
            .iter()
            .all(|(m, _)| m.as_ref().len() <= limits.zset_value);
    let mut out = Vec::with_capacity(64 + members.len() * 32);
    if small {
        // a listpack zset is ordered by score, then member bytes
        members
            .sort_unstable_by(|a, b| cmp(&a.1, &b.1).then_with(|| a.0.as_ref().cmp(b.0.as_ref())));
        out.push(TYPE_ZSET_LISTPACK);
        let mut lp = Listpack::with_capacity(members.len() * 2);
        let mut buf = Vec::with_capacity(24);
        for (m, s) in members.iter() {
            lp.push(m.as_ref());
            buf.clear();
            text(*s, &mut buf);
            lp.push(&buf);
        }
        rdb_string(&mut out, &lp.finish());
    } else {
        // greatest first, as Redis' own DUMP writes a skiplist: each member
        // loaded is then the smallest so far, and Redis inserts it at the
        // head of the skiplist at once instead of searching its place
        members
            .sort_unstable_by(|a, b| cmp(&b.1, &a.1).then_with(|| b.0.as_ref().cmp(a.0.as_ref())));
        out.push(TYPE_ZSET_2);
        rdb_len(&mut out, members.len() as u64);
        for (m, s) in members.iter() {
            rdb_string(&mut out, m.as_ref());
            out.extend_from_slice(&float(*s).to_le_bytes());
        }
    }
    footer(out)
}

fn footer(mut out: Vec<u8>) -> Vec<u8> {
    out.extend_from_slice(&RDB_VERSION.to_le_bytes());
    let crc = CRC64.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// RDB length encoding (`rdbSaveLen`).
fn rdb_len(out: &mut Vec<u8>, len: u64) {
    if len < 1 << 6 {
        out.push(len as u8);
    } else if len < 1 << 14 {
        out.push(0x40 | (len >> 8) as u8);
        out.push(len as u8);
    } else if len <= u64::from(u32::MAX) {
        out.push(0x80);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    } else {
        out.push(0x81);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// An RDB string, stored raw (length, then the bytes).
fn rdb_string(out: &mut Vec<u8>, s: &[u8]) {
    rdb_len(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// A listpack being built (Redis' `listpack.c` format): a 6-byte header
/// (total bytes, element count), the entries, and an end byte. Each entry
/// is encoded as Redis would: integers in canonical form as integers,
/// everything else as strings, followed by its length in reverse varint.
struct Listpack {
    buf: Vec<u8>,
    count: usize,
}

impl Listpack {
    fn with_capacity(entries: usize) -> Self {
        let mut buf = Vec::with_capacity(7 + entries * 16);
        buf.extend_from_slice(&[0; 6]);
        Listpack { buf, count: 0 }
    }

    fn push(&mut self, s: &[u8]) {
        let start = self.buf.len();
        match canonical_int(s) {
            Some(v) => self.push_int(v),
            None => self.push_str(s),
        }
        let len = (self.buf.len() - start) as u64;
        self.backlen(len);
        self.count += 1;
    }

    fn push_int(&mut self, v: i64) {
        let b = &mut self.buf;
        if (0..=127).contains(&v) {
            b.push(v as u8);
        } else if (-4096..=4095).contains(&v) {
            let u = if v < 0 { (1 << 13) + v } else { v } as u16;
            b.push(0xC0 | (u >> 8) as u8);
            b.push(u as u8);
        } else if (-32768..=32767).contains(&v) {
            b.push(0xF1);
            b.extend_from_slice(&(v as i16).to_le_bytes());
        } else if (-8_388_608..=8_388_607).contains(&v) {
            b.push(0xF2);
            b.extend_from_slice(&(v as i32).to_le_bytes()[..3]);
        } else if i32::try_from(v).is_ok() {
            b.push(0xF3);
            b.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            b.push(0xF4);
            b.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn push_str(&mut self, s: &[u8]) {
        let b = &mut self.buf;
        let n = s.len();
        if n < 64 {
            b.push(0x80 | n as u8);
        } else if n < 4096 {
            b.push(0xE0 | (n >> 8) as u8);
            b.push(n as u8);
        } else {
            b.push(0xF0);
            b.extend_from_slice(&(n as u32).to_le_bytes());
        }
        b.extend_from_slice(s);
    }

    /// `lpEncodeBacklen`: the entry length, most significant 7 bits first,
    /// every byte but the first with the high bit set.
    fn backlen(&mut self, l: u64) {
        let b = &mut self.buf;
        if l <= 127 {
            b.push(l as u8);
        } else if l < 16383 {
            b.push((l >> 7) as u8);
            b.push((l & 127) as u8 | 128);
        } else if l < 2_097_151 {
            b.push((l >> 14) as u8);
            b.push(((l >> 7) & 127) as u8 | 128);
            b.push((l & 127) as u8 | 128);
        } else if l < 268_435_455 {
            b.push((l >> 21) as u8);
            b.push(((l >> 14) & 127) as u8 | 128);
            b.push(((l >> 7) & 127) as u8 | 128);
            b.push((l & 127) as u8 | 128);
        } else {
            b.push((l >> 28) as u8);
            b.push(((l >> 21) & 127) as u8 | 128);
            b.push(((l >> 14) & 127) as u8 | 128);
            b.push(((l >> 7) & 127) as u8 | 128);
            b.push((l & 127) as u8 | 128);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf.push(0xFF);
        let total = self.buf.len() as u32;
        let count = self.count.min(65535) as u16;
        self.buf[..4].copy_from_slice(&total.to_le_bytes());
        self.buf[4..6].copy_from_slice(&count.to_le_bytes());
        self.buf
    }
}

/// `s` as an integer if Redis would store it as one (`lpStringToInt64`):
/// canonical decimal form (no `+`, no leading zeros, no `-0`), fits an i64.
fn canonical_int(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let text = std::str::from_utf8(s).ok()?;
    let v: i64 = text.parse().ok()?;
    let mut buf = itoa::Buffer::new();
    (buf.format(v).as_bytes() == s).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_ints_are_those_redis_stores_as_ints() {
        assert_eq!(canonical_int(b"0"), Some(0));
        assert_eq!(canonical_int(b"-12"), Some(-12));
        assert_eq!(canonical_int(b"1700000000000"), Some(1_700_000_000_000));
        for s in [
            "",
            "01",
            "+1",
            "-0",
            "1.5",
            "1e3",
            " 1",
            "99999999999999999999",
        ] {
            assert_eq!(canonical_int(s.as_bytes()), None, "{s:?}");
        }
    }

    #[test]
    fn backlen_matches_redis_for_long_entries() {
        let mut lp = Listpack::with_capacity(1);
        lp.backlen(200);
        assert_eq!(&lp.buf[6..], &[1, 72 | 128][..]);
    }

    #[test]
    fn crc_is_redis_crc64() {
        // the check value of Redis' crc64 (src/crc64.c test)
        assert_eq!(CRC64.checksum(b"123456789"), 0xe9c6_d914_c4b8_d9ca);
    }
}
