//! The Lua scripts, each from its own file beside this one, built once per
//! process (`Script` hashes its source; `invoke_async` sends `EVALSHA` and
//! loads the script only when Redis does not know it yet).

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($name:ident, $file:literal) => {
        pub static $name: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!($file)));
    };
}

script!(ENQUEUE, "enqueue.lua");
script!(PROMOTE_RETRIES, "promote_retries.lua");
script!(REPLAY, "replay.lua");
script!(HOLD_LEASE, "hold_lease.lua");
// Releases a consumer-name lease and a cache lock alike.
script!(RELEASE, "release.lua");
script!(TRIM, "trim.lua");
script!(RAISE_SHARD_COUNT, "raise_shard_count.lua");
script!(CACHE_PUT, "cache_put.lua");
script!(CACHE_INVALIDATE, "cache_invalidate.lua");
script!(RECORD_ACTIVITY, "record_activity.lua");
script!(RECORD_REFUSAL, "record_refusal.lua");
script!(REPORT_ROLE, "report_role.lua");
