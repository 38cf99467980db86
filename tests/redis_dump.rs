//! `features::store::dump` against a real redis-server: every payload
//! (listpack or plain encoding, integers, floats, text, long values, many
//! entries) restores to exactly the values it was built from, in the
//! encoding Redis picks itself; and where Redis keeps the value as a
//! listpack, the restored key is byte for byte the key Redis builds from
//! `HSET`/`ZADD` (their `DUMP`s are equal; `DUMP` may LZF-compress, so the
//! two dumps are compared rather than our payload with one of them).

mod common;
use common::*;
use nextbest::features::store::dump;
use nextbest::features::store::redis::{RedisSettings, RedisStore};
use nextbest::features::FeatureSet;
use redis::AsyncCommands;
use std::sync::Arc;

async fn conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connects")
}

fn hash_cases() -> Vec<(&'static str, Vec<(String, String)>)> {
    let mixed = vec![
        ("views".into(), "3".into()),
        ("neg".into(), "-4097".into()),
        ("small_neg".into(), "-12".into()),
        ("i16".into(), "30000".into()),
        ("i24".into(), "8000000".into()),
        ("i32".into(), "2000000000".into()),
        ("ts".into(), "1764400000000".into()),
        ("price|3".into(), "19.99".into()),
        ("zero_lead".into(), "007".into()),
        ("minus_zero".into(), "-0".into()),
        ("empty".into(), String::new()),
        ("text".into(), "café ☕".into()),
        ("42".into(), "field names can be numbers".into()),
    ];
    let wide: Vec<(String, String)> = (0..128)
        .map(|i| (format!("f|{i}"), format!("{}.5", i * 1000)))
        .collect();
    let wider: Vec<(String, String)> = (0..300)
        .map(|i| (format!("f|{i}"), i.to_string()))
        .collect();
    let long_value = vec![("a".into(), "x".repeat(65)), ("b".into(), "y".repeat(5000))];
    let mid_value = vec![("a".into(), "z".repeat(64)), ("b".into(), "1".into())];
    vec![
        ("mixed", mixed),
        ("128 entries", wide),
        ("300 entries", wider),
        ("values over 64 bytes", long_value),
        ("value of 64 bytes", mid_value),
    ]
}

fn zset_cases() -> Vec<(&'static str, Vec<(String, i64)>)> {
    let t = 1_764_400_000_000_i64;
    let ids: Vec<(String, i64)> = (0..40)
        .map(|i| (format!("ev-{:08x}", i * 7919), t + (i * 37 % 11) * 1000))
        .collect();
    let many: Vec<(String, i64)> = (0..500).map(|i| (format!("ev-{i}"), t - i * 3)).collect();
    let ties = vec![
        ("b".into(), 5),
        ("a".into(), 5),
        ("ab".into(), 5),
        ("7".into(), 5),
        ("c".into(), -3),
    ];
    let long_member = vec![("m".repeat(65), t), ("n".into(), t + 1)];
    vec![
        ("event ids", ids),
        ("500 members", many),
        ("ties ordered by member", ties),
        ("member over 64 bytes", long_member),
    ]
}

async fn encoding(c: &mut redis::aio::MultiplexedConnection, key: &str) -> String {
    redis::cmd("OBJECT")
        .arg("ENCODING")
        .arg(key)
        .query_async(c)
        .await
        .expect("object encoding")
}

/// Restores `payload` into `key` (expiring in a minute); a refusal fails
/// the test.
async fn restore(c: &mut redis::aio::MultiplexedConnection, name: &str, key: &str, payload: &[u8]) {
    let _: () = redis::cmd("RESTORE")
        .arg(key)
        .arg(60_000)
        .arg(payload)
        .query_async(c)
        .await
        .unwrap_or_else(|e| panic!("{name}: RESTORE refused: {e}"));
}

/// Our restored key `ours` is encoded as Redis encodes `theirs`, which Redis
/// just built itself (it gets the same expiry here); as a listpack, it is
/// the same bytes.
async fn same_key(c: &mut redis::aio::MultiplexedConnection, name: &str, ours: &str, theirs: &str) {
    let _: () = c.pexpire(theirs, 60_000).await.expect("pexpire");
    let their_encoding = encoding(c, theirs).await;
    assert_eq!(encoding(c, ours).await, their_encoding, "{name}: encoding");
    if their_encoding == "listpack" {
        let mut dumps = Vec::new();
        for k in [ours, theirs] {
            let d: Vec<u8> = redis::cmd("DUMP")
                .arg(k)
                .query_async(c)
                .await
                .expect("dump");
            dumps.push(d);
        }
        assert_eq!(
            dumps[0], dumps[1],
            "{name}: listpack differs from the one Redis builds"
        );
    }
}

/// Every hash case, built with `limits`, restores to its fields and equals
/// the key Redis builds from `HSET`.
async fn check_hashes(c: &mut redis::aio::MultiplexedConnection, limits: &dump::Limits) {
    let p = unique("dump-hash");
    for (name, fields) in hash_cases() {
        let ours = format!("{p}:{name}:ours");
        let theirs = format!("{p}:{name}:theirs");
        restore(c, name, &ours, &dump::hash(&fields, limits)).await;
        let got: Vec<(String, String)> = c.hgetall(&ours).await.expect("hgetall");
        let mut want = fields.clone();
        let mut got_sorted = got.clone();
        want.sort();
        got_sorted.sort();
        assert_eq!(got_sorted, want, "{name}: restored fields");
        for (f, v) in fields.iter().take(3) {
            let one: String = c.hget(&ours, f).await.expect("hget");
            assert_eq!(&one, v, "{name}: HGET {f}");
        }
        // Redis builds the same key itself
        let _: () = c.hset_multiple(&theirs, &fields).await.expect("hset");
        same_key(c, name, &ours, &theirs).await;
    }
}

/// Every sorted-set case, built with `limits`, restores to its members and
/// equals the key Redis builds from `ZADD`.
async fn check_zsets(c: &mut redis::aio::MultiplexedConnection, limits: &dump::Limits) {
    let p = unique("dump-zset");
    for (name, members) in zset_cases() {
        let ours = format!("{p}:{name}:ours");
        let theirs = format!("{p}:{name}:theirs");
        let mut m = members.clone();
        let payload = dump::zset(&mut m, limits);
        restore(c, name, &ours, &payload).await;
        let got: Vec<(String, i64)> = c.zrange_withscores(&ours, 0, -1).await.expect("zrange");
        let mut want = members.clone();
        want.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        assert_eq!(got, want, "{name}: restored members in score order");
        let (m0, s0) = &members[0];
        let score: Option<i64> = c.zscore(&ours, m0).await.expect("zscore");
        assert_eq!(score, Some(*s0), "{name}: ZSCORE {m0}");
        let pairs: Vec<(i64, &str)> = members.iter().map(|(m, s)| (*s, m.as_str())).collect();
        let _: () = c.zadd_multiple(&theirs, &pairs).await.expect("zadd");
        same_key(c, name, &ours, &theirs).await;
    }
}

/// Sorted sets with any scores (`dump::zset_scores`, the co-visit lists):
/// a listpack and a plain one restore to exactly the scores given, in
/// Redis' order (ties by member).
#[tokio::test]
async fn zset_payloads_with_fractional_scores_restore_exactly() {
    let mut c = conn().await;
    let p = unique("dump-zscores");
    let mut r = Rng(0x005c_0ee5);
    let mut scores = |n: usize| -> Vec<(String, f64)> {
        (0..n)
            .map(|i| {
                let s = match i % 4 {
                    0 => 2f64.powi(96) * (1.0 + r.below(1 << 40) as f64 / (1u64 << 40) as f64),
                    1 => r.below(1000) as f64 / 7.0,
                    2 => 3.0,
                    _ => 2f64.powi(-30) * (1 + r.below(99)) as f64,
                };
                (format!("n{i:03}"), s)
            })
            .collect()
    };
    for (name, members) in [("50 members", scores(50)), ("150 members", scores(150))] {
        let key = format!("{p}:{name}");
        let mut m = members.clone();
        let payload = dump::zset_scores(&mut m, &dump::Limits::default());
        restore(&mut c, name, &key, &payload).await;
        let got: Vec<(String, f64)> = c.zrange_withscores(&key, 0, -1).await.expect("zrange");
        let mut want = members.clone();
        want.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        assert_eq!(got, want, "{name}: restored members and scores, in order");
        let ties = want.iter().filter(|(_, s)| *s == 3.0).count();
        assert!(ties > 1, "{name}: the case has ties");
    }
}

#[tokio::test]
async fn hash_payloads_restore_to_their_fields_and_match_redis_dump() {
    check_hashes(&mut conn().await, &dump::Limits::default()).await;
}

#[tokio::test]
async fn zset_payloads_restore_to_their_members_and_match_redis_dump() {
    check_zsets(&mut conn().await, &dump::Limits::default()).await;
}

/// A server keeping larger listpacks (`*-max-listpack-*` raised, as
/// feature-store/README.md suggests for big first loads): the store reads
/// its limits, and payloads built with them are the listpacks Redis builds.
/// (A redis-server of its own: the settings would change the other tests'
/// encodings.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_follow_the_servers_listpack_limits() {
    let own = RedisProc::start();
    let client = redis::Client::open(own.url()).expect("redis url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connects");
    let store = RedisStore::connect(
        RedisSettings {
            url: own.url(),
            key_prefix: unique("lp"),
            dedupe_window_ms: 7 * 86_400_000,
            ttl_seconds: 60,
            timeout_ms: 2000,
            timer_shards: 16,
        },
        Arc::new(FeatureSet::load(&repo().join("feature-store/features.toml")).expect("features")),
    )
    .await
    .expect("store connects");
    assert_eq!(store.listpack_limits().await, dump::Limits::default());
    for (name, value) in [
        ("hash-max-listpack-entries", "512"),
        ("hash-max-listpack-value", "100"),
        ("zset-max-listpack-entries", "512"),
        ("zset-max-listpack-value", "70"),
    ] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut c)
            .await
            .expect("config set");
    }
    let limits = store.listpack_limits().await;
    assert_eq!(
        limits,
        dump::Limits {
            hash_entries: 512,
            hash_value: 100,
            zset_entries: 512,
            zset_value: 70,
        }
    );
    // the 300-field hash, the 500-member set and the 65-byte values are now
    // listpacks on both sides (same_key compares the bytes)
    check_hashes(&mut c, &limits).await;
    check_zsets(&mut c, &limits).await;
    let key = format!("{}:big", unique("lp"));
    let mut members: Vec<(String, i64)> = (0..500).map(|i| (format!("e{i}"), i)).collect();
    restore(
        &mut c,
        "500 members",
        &key,
        &dump::zset(&mut members, &limits),
    )
    .await;
    assert_eq!(encoding(&mut c, &key).await, "listpack");
}

#[tokio::test]
async fn a_corrupted_payload_is_refused_not_stored() {
    let mut c = conn().await;
    let key = format!("{}:x", unique("dump-bad"));
    let mut payload = dump::hash(&[("a", "1")], &dump::Limits::default());
    let n = payload.len();
    payload[n - 1] ^= 0x55; // the checksum no longer matches
    let r: redis::RedisResult<()> = redis::cmd("RESTORE")
        .arg(&key)
        .arg(0)
        .arg(payload)
        .query_async(&mut c)
        .await;
    assert!(
        r.is_err(),
        "Redis must refuse a payload with a bad checksum"
    );
    let exists: bool = c.exists(&key).await.expect("exists");
    assert!(!exists);
}
