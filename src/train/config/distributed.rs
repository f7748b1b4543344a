//! `[distributed]`: how many peers on how many nodes, and where the nodes meet. Its addresses are
//! parsed when the config loads, so a mistyped one fails before anything starts.

use burn_collective::CollectiveConfig;
use serde::{Deserialize, Serialize};

use super::sections::invalid;
use crate::util::error::Result;

/// Data parallelism (`[distributed]`): `train.batch_size` is the global batch, split evenly over
/// every peer of every node. One peer on one node (the default) trains on one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedConfig {
    /// Peers on this node: threads that share the cores on CPU backends, one per GPU otherwise.
    pub peers: usize,
    /// GPU indices of the local peers (default `0..peers`); CPU backends ignore them.
    pub devices: Vec<usize>,
    /// Nodes (machines or processes) in the run, each with `peers` peers.
    pub nodes: usize,
    /// This node's index in `0..nodes`; node 0 writes the checkpoints, metrics and progress.
    pub node: usize,
    /// The orchestrator that `qformer orchestrator --port P` runs, e.g. `ws://10.0.0.1:3000`.
    pub orchestrator: String,
    /// This node's address as the other nodes reach it, e.g. `ws://10.0.0.2:3001`; its port is
    /// the one the node serves tensor transfers on.
    pub address: String,
    /// Seconds a peer waits for the others at a step before the run stops with an error naming
    /// the peers that did not arrive.
    pub timeout_s: u64,
}

impl Default for DistributedConfig {
    fn default() -> Self {
        Self { peers: 1, devices: Vec::new(), nodes: 1, node: 0, orchestrator: String::new(), address: String::new(), timeout_s: 600 }
    }
}

impl DistributedConfig {
    pub fn validate(&self, source: &str) -> Result<()> {
        let err = |key: &str, msg: String| Err(invalid(key, msg, source));
        if self.peers == 0 || self.nodes == 0 {
            return err("distributed.peers", "distributed.peers and distributed.nodes must be > 0".into());
        }
        if !self.devices.is_empty() && self.devices.len() != self.peers {
            return err("distributed.devices", format!("gives {} devices for {} peers", self.devices.len(), self.peers));
        }
        if self.node >= self.nodes {
            return err("distributed.node", format!("must be in 0..{}", self.nodes));
        }
        if self.timeout_s == 0 {
            return err("distributed.timeout_s", "must be > 0".into());
        }
        self.collective(source).map(|_| ())
    }

    /// burn-collective's settings for this node: the local peers, and with several nodes the
    /// orchestrator's and this node's addresses (parsed here) and the port tensors travel on.
    pub fn collective(&self, source: &str) -> Result<CollectiveConfig> {
        let config = CollectiveConfig::default().with_num_devices(self.peers);
        if self.nodes == 1 {
            return Ok(config);
        }
        check_address("distributed.orchestrator", &self.orchestrator, "ws://10.0.0.1:3000", source)?;
        let port = check_address("distributed.address", &self.address, "ws://10.0.0.2:3001", source)?;
        // burn's address type takes any string; the checks above are what can refuse one.
        let parse = |key: &str, v: &str| v.parse().map_err(|e: String| invalid(key, e, source));
        Ok(config
            .with_num_nodes(self.nodes as u32)
            .with_global_address(parse("distributed.orchestrator", &self.orchestrator)?)
            .with_node_address(parse("distributed.address", &self.address)?)
            .with_data_service_port(port))
    }

    /// Peers in the whole run.
    pub fn world(&self) -> usize {
        self.peers * self.nodes
    }
}

/// Checks `ws://HOST:PORT` (or `wss://`, a trailing `/` allowed) and returns its port.
fn check_address(key: &str, value: &str, example: &str, source: &str) -> Result<u16> {
    let bad = |why: &str| invalid(key, format!("`{value}` {why}; several nodes need one like \"{example}\""), source);
    if value.is_empty() {
        return Err(bad("is empty"));
    }
    let rest =
        value.strip_prefix("ws://").or_else(|| value.strip_prefix("wss://")).ok_or_else(|| bad("does not start with ws:// or wss://"))?;
    let (host, port) = rest.trim_end_matches('/').rsplit_once(':').ok_or_else(|| bad("has no :PORT"))?;
    if host.is_empty() || host.contains(['/', ' ']) {
        return Err(bad("has no host name"));
    }
    port.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| bad("has no valid port (1 to 65535)"))
}
