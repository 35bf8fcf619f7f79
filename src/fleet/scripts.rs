//! The server-side Lua scripts. Each runs atomically in Redis and touches
//! only the keys it is given, all in one hash slot (the ban scripts use the
//! `{bans}` tag; the observe script is called with the keys of one source,
//! or, on a single server, of many sources at once). Time inside the scripts
//! is the Redis server's (`TIME`), so the nodes' clocks never skew a window.

/// Publishes a ban. KEYS: ban key, index, log. ARGV: target, expiry (Unix
/// ms), message, log length.
///
/// A ban that is already in force until the same time or later is left as
/// it is and nothing is logged (returns 0); an expired one is refused
/// (returns -1). Otherwise the ban key is set to expire with the ban
/// (`PXAT`), the index updated, expired index entries pruned, and the
/// message appended to the log (returns 1).
pub const BLOCK: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expires = tonumber(ARGV[2])
if expires == nil or expires <= now then return -1 end
local current = redis.call('ZSCORE', KEYS[2], ARGV[1])
if current and tonumber(current) >= expires and redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3], 'PXAT', expires)
redis.call('ZADD', KEYS[2], expires, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'm', ARGV[3])
return 1
"#;

/// Lifts a ban. KEYS: ban key, index, log. ARGV: target, message, log
/// length. Always logged (a node that missed the ban lifts nothing);
/// returns 1 if the ban was in Redis, else 0.
pub const UNBLOCK: &str = r#"
local existed = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'm', ARGV[2])
return existed
"#;

/// Records attempts and tells which sources crossed the line.
///
/// KEYS: for each source, its pairs window then its reported marker.
/// ARGV: window (ms), limit (more than this many pairs = a scan), cap of
/// members kept per window, then for each source the number of its members
/// followed by the members (`host:port`).
///
/// Per source: the members are added (or refreshed) with the server time,
/// members older than the window dropped, the window capped to its newest
/// members and set to expire after a quiet window. If the source is marked
/// reported, the mark is kept alive (one report per episode); otherwise, if
/// the window holds more than `limit` members, the source is marked and
/// returned with its members. A source whose keys hold the wrong type is
/// skipped and counted.
///
/// Returns `{errors, {index, member...}, ...}`.
pub const OBSERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local out = {0}
local a = 4
for i = 1, #KEYS, 2 do
  local wkey = KEYS[i]
  local rkey = KEYS[i + 1]
  local n = tonumber(ARGV[a])
  a = a + 1
  local args = {}
  for j = 1, n do
    args[#args + 1] = now
    args[#args + 1] = ARGV[a]
    a = a + 1
  end
  local added = redis.pcall('ZADD', wkey, unpack(args))
  if type(added) == 'table' and added.err then
    out[1] = out[1] + 1
  else
    redis.call('ZREMRANGEBYSCORE', wkey, '-inf', now - window)
    local count = redis.call('ZCARD', wkey)
    if count > cap then
      redis.call('ZREMRANGEBYRANK', wkey, 0, count - cap - 1)
      count = cap
    end
    redis.call('PEXPIRE', wkey, window)
    if redis.call('EXISTS', rkey) == 1 then
      redis.call('PEXPIRE', rkey, window)
    elseif count > limit then
      redis.call('SET', rkey, '1', 'PX', window)
      local crossing = {(i + 1) / 2}
      for _, m in ipairs(redis.call('ZRANGE', wkey, 0, -1)) do
        crossing[#crossing + 1] = m
      end
      out[#out + 1] = crossing
    end
  end
end
return out
"#;

/// The state of the ban keys. KEYS: epoch, log. ARGV: an epoch to write if
/// there is none. Returns `{epoch, last id, first kept id, max deleted id}`
/// from `XINFO STREAM`: the last entry ever added to the log; the first
/// entry still in it when older ones were trimmed (`0-0` if none ever
/// was); the last entry deleted by `XDEL` (`0-0` if none). With them a node
/// knows whether the log still holds every entry after its position.
pub const SYNC: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  redis.call('SET', KEYS[1], ARGV[1])
  epoch = ARGV[1]
end
local last_id = '0-0'
local first_kept = '0-0'
local deleted_id = '0-0'
if redis.call('EXISTS', KEYS[2]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  local f = {}
  for i = 1, #info - 1, 2 do f[info[i]] = info[i + 1] end
  last_id = f['last-generated-id'] or last_id
  deleted_id = f['max-deleted-entry-id'] or deleted_id
  if tonumber(f['entries-added'] or 0) > tonumber(f['length'] or 0) then
    first_kept = f['recorded-first-entry-id'] or first_kept
  end
end
return {epoch, last_id, first_kept, deleted_id}
"#;
