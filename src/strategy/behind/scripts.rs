//! Write-behind's Lua scripts: the write and its queue entry in one atomic step on the key's
//! node, and the worker's removal of "not found" markers.

/// The client's SET/SETEX/PSETEX, and the XADD of the key and value, unless the queue is full.
/// KEYS: key, stream. ARGV: max queue, index in ARGV of the value, the command, its arguments
/// after the key. `pcall`: Redis's own error for a bad option is returned as it is, and nothing
/// is queued; neither is a SET NX/XX that did not set. A stream is made with its consumer group
/// (on a cluster a slot's stream is first made here), so no entry is ever in a stream that no
/// worker's group reads.
pub(crate) const SET_SCRIPT: &str = "if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[1]) then
  return redis.error_reply('ERR cacheside: write-behind queue full')
end
local r = redis.pcall(ARGV[3], KEYS[1], unpack(ARGV, 4))
if type(r) == 'table' and r.err then return r end
if r then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    redis.call('XGROUP', 'CREATE', KEYS[2], 'cacheside', '0', 'MKSTREAM')
  end
  redis.call('XADD', KEYS[2], '*', 'k', KEYS[1], 'v', ARGV[tonumber(ARGV[2])])
end
return r";

/// DEL or UNLINK (ARGV[1]) of the client's keys, with a deletion queued for each key of a
/// mapping that has a `delete_query`, unless a queue is full. KEYS come in threes, one per
/// client key: the key, its stream, its "not found" marker (a key no mapping queues names
/// itself three times). ARGV[1 + i]: key i's queue bound, 0 for a key not queued. Each queued
/// deletion sets the key's marker to the entry's id, so a read-through miss does not load the
/// row the database still holds; the worker removes the marker once the row is deleted, if it
/// still holds that id ([`UNMARK_SCRIPT`]). The marker's day-long expiry is only a net for a
/// queue no worker drains any more.
///
/// Its first line marks it for the cluster routing
/// ([`PER_KEY_SCRIPT`](crate::tier::redis::cluster::PER_KEY_SCRIPT)): over several slots it
/// runs once per slot with that slot's keys, and the counts are summed, as Redis Cluster
/// clients split a DEL.
pub(crate) const DEL_SCRIPT: &str = "-- cacheside: per key
local n = #KEYS / 3
for i = 1, n do
  local max = tonumber(ARGV[1 + i])
  if max > 0 and redis.call('XLEN', KEYS[3 * i - 1]) >= max then
    return redis.error_reply('ERR cacheside: write-behind queue full')
  end
end
local keys = {}
for i = 1, n do keys[i] = KEYS[3 * i - 2] end
local gone = redis.call(ARGV[1], unpack(keys))
for i = 1, n do
  if tonumber(ARGV[1 + i]) > 0 then
    local s = KEYS[3 * i - 1]
    if redis.call('EXISTS', s) == 0 then
      redis.call('XGROUP', 'CREATE', s, 'cacheside', '0', 'MKSTREAM')
    end
    local id = redis.call('XADD', s, '*', 'k', KEYS[3 * i - 2], 'd', '1')
    redis.call('SET', KEYS[3 * i], id, 'PX', 86400000)
  end
end
return gone";

/// Removes "not found" markers (KEYS) that still hold the ids (ARGV) the worker applied.
pub(crate) const UNMARK_SCRIPT: &str = "local n = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then n = n + redis.call('DEL', KEYS[i]) end
end
return n";

/// The reply of a write refused by [`SET_SCRIPT`] or [`DEL_SCRIPT`] for a full queue.
pub const QUEUE_FULL: &[u8] = b"-ERR cacheside: write-behind queue full\r\n";

#[cfg(test)]
mod tests {
    #[test]
    fn the_delete_script_is_marked_for_the_cluster_split() {
        assert!(super::DEL_SCRIPT.starts_with(crate::tier::redis::cluster::PER_KEY_SCRIPT));
    }
}
