//! The cluster directory in Redis: which nodes are alive, and the shared policy store.
//!
//! Keys (all under `blindrelay:`):
//! - `node:{id}`: the node's record (JSON), written every heartbeat with a short TTL, so a
//!   node killed without warning vanishes within `node_ttl`; a node that stops cleanly
//!   deletes it.
//! - `policy`: a hash `{version, toml, node, at_ms}`, the policy set every node applies.
//!   It changes only through a compare-and-set script on `version`, which also publishes
//!   `{version, node, at_ms}` on the channel `blindrelay:policy`: two admins changing
//!   policy on two nodes at once cannot lose either change, and every node applies the
//!   versions in order.

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use thiserror::Error;

const PREFIX: &str = "blindrelay:";
pub const POLICY_CHANNEL: &str = "blindrelay:policy";

/// Directory operations, as the `op` label of `blindrelay_cluster_directory_errors_total`.
pub const OPS: [&str; 5] = ["connect", "heartbeat", "read", "policy_write", "subscribe"];

#[derive(Debug, Error)]
pub enum DirectoryError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("directory record {key}: {message}")]
    Record { key: String, message: String },
}

/// What a node tells the cluster about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeRecord {
    pub node_id: String,
    /// The address other nodes and clients are told (`cluster.announce`).
    pub announce: String,
    /// Where other nodes dial its node link.
    pub quic: String,
    /// Where clients connect for signalling.
    pub signal_url: String,
    pub started_unix_ms: u64,
    /// Taking no new calls (SIGTERM received).
    pub draining: bool,
    /// Peer node ids of its links up now.
    pub links: Vec<String>,
    /// The shared policy version it applies.
    pub policy_version: u64,
}

/// A change announced on [`POLICY_CHANNEL`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyNotice {
    pub version: u64,
    pub node: String,
    pub at_ms: u64,
}

/// The shared policy set as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    pub version: u64,
    pub toml: String,
    pub at_ms: u64,
}

/// Compare-and-set of the policy hash, publishing the new version in the same step.
const POLICY_CAS: &str = r#"
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if v ~= tonumber(ARGV[1]) then return -1 end
local nv = v + 1
redis.call('HSET', KEYS[1], 'version', nv, 'toml', ARGV[2], 'node', ARGV[3], 'at_ms', ARGV[4])
redis.call('PUBLISH', KEYS[2], cjson.encode({version = nv, node = ARGV[3], at_ms = tonumber(ARGV[4])}))
return nv
"#;

/// Claim a call for a node: the owner stays while its node is listed; a call without one,
/// or whose owner's node record is gone (killed, or stopped), goes to the claimant. One
/// step, so two nodes racing for a call agree on the winner (SET NX, plus takeover).
const CALL_CLAIM: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. cur) == 1 then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"#;

/// Keep a node's claim on a call alive (`PEXPIRE` if it is still the owner), and
/// rewrite the call's members (participant -> node, pairs from ARGV[3] on).
const CALL_REFRESH: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
if #ARGV > 2 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 3))
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 1
"#;

/// Give up a call the node owns (its last participant left).
const CALL_RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1], KEYS[2]) end
return 0
"#;

fn call_owner_key(call: &str) -> String {
    format!("{PREFIX}call:{call}:owner")
}

fn call_members_key(call: &str) -> String {
    format!("{PREFIX}call:{call}:members")
}

/// A call as the directory lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub call: String,
    pub owner: String,
    /// Participant (public id) -> the node that serves it, sorted.
    pub members: Vec<(String, String)>,
}

/// A handle on the directory: one multiplexed connection that reconnects by itself.
#[derive(Clone)]
pub struct Directory {
    client: redis::Client,
    conn: ConnectionManager,
}

fn node_key(id: &str) -> String {
    format!("{PREFIX}node:{id}")
}

impl Directory {
    /// Connect, failing if Redis cannot be reached within `timeout`.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Directory, DirectoryError> {
        let client = redis::Client::open(url)?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2);
        let conn = client.get_connection_manager_with_config(cfg).await?;
        Ok(Directory { client, conn })
    }

    /// Write this node's record with a TTL.
    pub async fn heartbeat(&self, rec: &NodeRecord, ttl: Duration) -> Result<(), DirectoryError> {
        let json =
            serde_json::to_string(rec).unwrap_or_else(|_| unreachable!("NodeRecord serializes"));
        redis::cmd("SET")
            .arg(node_key(&rec.node_id))
            .arg(json)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async::<()>(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Remove this node's record (a clean stop).
    pub async fn remove_node(&self, id: &str) -> Result<(), DirectoryError> {
        redis::cmd("DEL")
            .arg(node_key(id))
            .query_async::<()>(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Every key matching `pattern` (SCAN, so Redis is never blocked by a large KEYS).
    async fn scan(&self, pattern: &str) -> Result<Vec<String>, DirectoryError> {
        let mut conn = self.conn.clone();
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// Every live node's record, sorted by id.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, DirectoryError> {
        let mut conn = self.conn.clone();
        let keys = self.scan(&format!("{PREFIX}node:*")).await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        let mut out = Vec::new();
        for (key, v) in keys.iter().zip(values) {
            // Expired between SCAN and MGET.
            let Some(v) = v else { continue };
            let rec: NodeRecord = serde_json::from_str(&v).map_err(|e| DirectoryError::Record {
                key: key.clone(),
                message: e.to_string(),
            })?;
            out.push(rec);
        }
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(out)
    }

    /// The shared policy set, if any node has stored one.
    pub async fn policy(&self) -> Result<Option<StoredPolicy>, DirectoryError> {
        let (version, toml, at_ms): (Option<u64>, Option<String>, Option<u64>) =
            redis::cmd("HMGET")
                .arg(format!("{PREFIX}policy"))
                .arg("version")
                .arg("toml")
                .arg("at_ms")
                .query_async(&mut self.conn.clone())
                .await?;
        Ok(match (version, toml) {
            (Some(version), Some(toml)) => Some(StoredPolicy {
                version,
                toml,
                at_ms: at_ms.unwrap_or(0),
            }),
            _ => None,
        })
    }

    /// Store `toml` as version `expected + 1` and announce it, if the stored version is
    /// still `expected`. `Ok(None)`: someone else changed it first; read and retry.
    pub async fn put_policy(
        &self,
        expected: u64,
        toml: &str,
        node: &str,
        at_ms: u64,
    ) -> Result<Option<u64>, DirectoryError> {
        let v: i64 = redis::Script::new(POLICY_CAS)
            .key(format!("{PREFIX}policy"))
            .key(POLICY_CHANNEL)
            .arg(expected)
            .arg(toml)
            .arg(node)
            .arg(at_ms)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(u64::try_from(v).ok())
    }

    /// The node that owns `call`: `node` itself if it had none or its owner is gone.
    pub async fn claim_call(
        &self,
        call: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<String, DirectoryError> {
        Ok(redis::Script::new(CALL_CLAIM)
            .key(call_owner_key(call))
            .arg(node)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(format!("{PREFIX}node:"))
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    /// Extend `node`'s claim on each of `calls` and record who is on which node.
    pub async fn refresh_calls(
        &self,
        node: &str,
        calls: &[(String, Vec<(String, String)>)],
        ttl: Duration,
    ) -> Result<(), DirectoryError> {
        let script = redis::Script::new(CALL_REFRESH);
        for (c, members) in calls {
            let mut inv = script.key(call_owner_key(c));
            inv.key(call_members_key(c))
                .arg(node)
                .arg(ttl.as_millis().max(1) as u64);
            for (p, n) in members {
                inv.arg(p).arg(n);
            }
            inv.invoke_async::<i64>(&mut self.conn.clone()).await?;
        }
        Ok(())
    }

    /// Every call with an owner, sorted by id.
    pub async fn calls(&self) -> Result<Vec<CallRecord>, DirectoryError> {
        let mut conn = self.conn.clone();
        let keys = self.scan(&format!("{PREFIX}call:*:owner")).await?;
        let mut out = Vec::new();
        for k in keys {
            let Some(call) = k
                .strip_prefix(&format!("{PREFIX}call:"))
                .and_then(|r| r.strip_suffix(":owner"))
            else {
                continue;
            };
            let owner: Option<String> = redis::cmd("GET").arg(&k).query_async(&mut conn).await?;
            let Some(owner) = owner else { continue };
            let mut members: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(call_members_key(call))
                .query_async(&mut conn)
                .await?;
            members.sort();
            out.push(CallRecord {
                call: call.to_string(),
                owner,
                members,
            });
        }
        out.sort_by(|a, b| a.call.cmp(&b.call));
        Ok(out)
    }

    /// Drop `node`'s claim on `call`.
    pub async fn release_call(&self, call: &str, node: &str) -> Result<(), DirectoryError> {
        redis::Script::new(CALL_RELEASE)
            .key(call_owner_key(call))
            .key(call_members_key(call))
            .arg(node)
            .invoke_async::<i64>(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// One node's record, if it is live.
    pub async fn node(&self, id: &str) -> Result<Option<NodeRecord>, DirectoryError> {
        let v: Option<String> = redis::cmd("GET")
            .arg(node_key(id))
            .query_async(&mut self.conn.clone())
            .await?;
        v.map(|v| {
            serde_json::from_str(&v).map_err(|e| DirectoryError::Record {
                key: node_key(id),
                message: e.to_string(),
            })
        })
        .transpose()
    }

    /// A subscription to policy notices (a connection of its own, as pub/sub needs).
    pub async fn subscribe_policy(&self) -> Result<redis::aio::PubSub, DirectoryError> {
        let mut ps = self.client.get_async_pubsub().await?;
        ps.subscribe(POLICY_CHANNEL).await?;
        Ok(ps)
    }
}
