//! The peers of a data-parallel run on burn-collective: each local peer is a thread with its own
//! device (CPU peers share the cores), registered with burn's collective server; with several
//! nodes the server joins burn's global orchestrator. Every exchange of a step goes through the
//! crate's all-reduce (sum): gradients as one flat device tensor, and the host vectors of the loss
//! (ids, captions, features to gather, loss values) as small tensors.
//!
//! A peer that fails or dies must not leave the others waiting: [`launch`] returns the first
//! error of any local peer, and its watchdog stops the run when a peer has waited at an exchange
//! longer than `timeout` while another never arrived, naming both.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};

use crate::objectives::{Alone, Peers};
use crate::train::config::DistributedConfig;
use crate::util::error::{Error, Result};
use crate::util::host::to_f32;

/// Peers that can also sum device tensors (the gradients).
pub trait Exchange<K: Backend>: Peers {
    /// The element-wise sum of `t` over every peer.
    fn all_sum_tensor(&self, t: Tensor<K, 1>) -> Result<Tensor<K, 1>>;
}

impl<K: Backend> Exchange<K> for Alone {
    fn all_sum_tensor(&self, t: Tensor<K, 1>) -> Result<Tensor<K, 1>> {
        Ok(t)
    }
}

/// Where each local peer stands, for the watchdog: exchanges entered and left.
#[derive(Default)]
struct Watch {
    entered: AtomicU64,
    left: AtomicU64,
    /// Milliseconds since the launch when the current exchange was entered.
    since_ms: AtomicU64,
}

/// One peer of the run, registered with burn-collective on `K`.
pub struct Peer<K: Backend> {
    rank: usize,
    world: usize,
    device: K::Device,
    watch: Arc<Watch>,
    started: Instant,
    name: String,
    /// What joining the run means here (with several nodes: through which orchestrator).
    joining: String,
}

impl<K: Backend> Peer<K> {
    fn id(&self) -> PeerId {
        PeerId::from(self.rank)
    }
}

fn collective_error(peer: &str, what: &str, e: burn_collective::CollectiveError) -> Error {
    Error::peer(peer, format!("{what} failed: {e:?}"))
}

impl<K: Backend> Peers for Peer<K> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn count(&self) -> usize {
        self.world
    }

    fn all_sum(&self, values: Vec<f32>) -> Result<Vec<f32>> {
        let n = values.len();
        let t = Tensor::<K, 1>::from_data(TensorData::new(values, [n]), &self.device);
        Ok(to_f32(self.all_sum_tensor(t)?))
    }
}

impl<K: Backend> Peer<K> {
    /// Runs one exchange under the watchdog's eye: it sees the peer enter, and leave.
    fn watched<T>(&self, exchange: impl FnOnce() -> T) -> T {
        self.watch.since_ms.store(self.started.elapsed().as_millis() as u64, Ordering::SeqCst);
        self.watch.entered.fetch_add(1, Ordering::SeqCst);
        let out = exchange();
        self.watch.left.fetch_add(1, Ordering::SeqCst);
        out
    }

    /// Joins the run: waits until every peer of every node has registered (watched, as a peer or
    /// node that never comes must not leave the others waiting forever).
    fn register(&self, config: CollectiveConfig) -> Result<()> {
        self.watched(|| burn_collective::register::<K>(self.id(), self.device.clone(), config))
            .map_err(|e| collective_error(&self.name, &self.joining, e))
    }
}

impl<K: Backend> Exchange<K> for Peer<K> {
    fn all_sum_tensor(&self, t: Tensor<K, 1>) -> Result<Tensor<K, 1>> {
        let out = self
            .watched(|| burn_collective::all_reduce::<K>(self.id(), t.into_primitive().tensor(), ReduceOperation::Sum))
            .map_err(|e| collective_error(&self.name, "all-reduce", e))?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
    }
}

impl<K: Backend> Drop for Peer<K> {
    fn drop(&mut self) {
        // Leaves the collective; errors here (a run already failing) add nothing.
        let _ = burn_collective::finish_collective::<K>(self.id());
    }
}

/// Runs `body` on each local peer (a thread each) and returns local peer 0's result, or the first
/// error any peer returns, or a watchdog error when a peer has waited at an exchange longer than
/// `cfg.timeout_s`. `device(i)` gives local peer `i`'s device. With one peer in the whole run,
/// `body` runs on this thread with [`Alone`].
pub fn launch<K, T, F>(cfg: &DistributedConfig, device: impl Fn(usize) -> K::Device, body: F) -> Result<T>
where
    K: Backend,
    T: Send + 'static,
    F: Fn(Box<dyn Exchange<K>>, K::Device) -> Result<T> + Send + Sync + 'static,
{
    if cfg.world() == 1 {
        return body(Box::new(Alone), device(0));
    }
    let config = cfg.collective("config")?;
    burn_collective::reset_collective::<K>();
    let body = Arc::new(body);
    let started = Instant::now();
    let (tx, rx) = mpsc::channel::<(usize, Result<T>)>();
    let mut watches = Vec::new();
    for local in 0..cfg.peers {
        let rank = cfg.node * cfg.peers + local;
        let watch = Arc::new(Watch::default());
        watches.push(watch.clone());
        let (tx, body, config, dev) = (tx.clone(), body.clone(), config.clone(), device(local));
        let (world, nodes) = (cfg.world(), cfg.nodes);
        let name = peer_name(cfg, local);
        let joining = format!("joining {}", the_run(cfg));
        std::thread::Builder::new()
            .name(format!("peer-{rank}"))
            .spawn(move || {
                let peer = Peer::<K> { rank, world, device: dev.clone(), watch, started, name: name.clone(), joining };
                // A panic (burn-collective panics when a connection to another node breaks)
                // becomes this peer's error instead of leaving the launcher waiting.
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    peer.register(config).and_then(|_| body(Box::new(peer), dev))
                }));
                let result = match run {
                    Ok(Ok(out)) => Ok(out),
                    Ok(Err(e @ Error::Peer { .. })) => Err(e),
                    Ok(Err(other)) => Err(Error::peer(&name, other.to_string())),
                    Err(panic) if nodes > 1 => Err(Error::peer(
                        &name,
                        format!(
                            "lost its connection to another node of the run: a node stopped or disconnected (burn-collective: {})",
                            panic_message(panic.as_ref())
                        ),
                    )),
                    Err(panic) => Err(Error::peer(&name, format!("stopped unexpectedly ({})", panic_message(panic.as_ref())))),
                };
                let _ = tx.send((local, result));
            })
            .map_err(|e| Error::peer("launcher", format!("cannot start a peer thread: {e}")))?;
    }
    drop(tx);
    let timeout = Duration::from_secs(cfg.timeout_s);
    let mut first = None;
    let mut done = 0;
    while done < cfg.peers {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok((local, Ok(out))) => {
                done += 1;
                if local == 0 {
                    first = Some(out);
                }
            }
            Ok((_, Err(e))) => return Err(e),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(Error::peer("launcher", "a peer thread ended without a result")),
            Err(mpsc::RecvTimeoutError::Timeout) => stalled(cfg, &watches, started, timeout)?,
        }
    }
    first.ok_or_else(|| Error::peer("launcher", "local peer 0 gave no result"))
}

/// The run a peer joins, as errors name it: with several nodes, through which orchestrator.
fn the_run(cfg: &DistributedConfig) -> String {
    if cfg.nodes > 1 {
        format!("the run through the orchestrator at {}", cfg.orchestrator)
    } else {
        "the run".to_string()
    }
}

/// A local peer as errors name it: its rank and, with several nodes, its node and address.
fn peer_name(cfg: &DistributedConfig, local: usize) -> String {
    let rank = cfg.node * cfg.peers + local;
    if cfg.nodes > 1 {
        format!("peer {rank} (node {} at {}, local peer {local})", cfg.node, cfg.address)
    } else {
        format!("peer {rank} (local peer {local})")
    }
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// The watchdog: an error when a local peer has waited at an exchange for longer than `timeout`.
fn stalled(cfg: &DistributedConfig, watches: &[Arc<Watch>], started: Instant, timeout: Duration) -> Result<()> {
    let now = started.elapsed().as_millis() as u64;
    let most = watches.iter().map(|w| w.entered.load(Ordering::SeqCst)).max().unwrap_or(0);
    for (local, w) in watches.iter().enumerate() {
        let waiting = w.entered.load(Ordering::SeqCst) > w.left.load(Ordering::SeqCst);
        let since = w.since_ms.load(Ordering::SeqCst);
        if waiting && now.saturating_sub(since) > timeout.as_millis() as u64 {
            let behind: Vec<String> = watches
                .iter()
                .enumerate()
                .filter(|(_, o)| o.entered.load(Ordering::SeqCst) < most)
                .map(|(i, _)| format!("peer {}", cfg.node * cfg.peers + i))
                .collect();
            let missing = if behind.is_empty() { "a peer of another node".to_string() } else { behind.join(", ") };
            let hint =
                if cfg.nodes > 1 { "; is the orchestrator running and reachable from this node, and has every node started?" } else { "" };
            let (place, hint) = match w.entered.load(Ordering::SeqCst) {
                1 => (format!("to join {}", the_run(cfg)), hint),
                n => (format!("at exchange {}", n - 1), ""),
            };
            return Err(Error::peer(
                peer_name(cfg, local),
                format!(
                    "waited {} s {place} for {missing}, which did not arrive{hint} (distributed.timeout_s = {})",
                    now.saturating_sub(since) / 1000,
                    cfg.timeout_s
                ),
            ));
        }
    }
    Ok(())
}
