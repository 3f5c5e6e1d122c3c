//! `--trace FILE` of `lethe mixnode run` and `lethe gateway run`: the node's part of a run's
//! trace (format v1, `lethe_sim::trace`), written by one thread that drains the engine's
//! packet-event hook (`lethe_engine::runtime::trace`) off the data plane.
//!
//! The node is the part's first node, named by its listen address; each next hop is added as
//! a peer, named by its address, when the node first sends to it. `lethe_sim::merge` combines
//! the parts of a run (`lethe testnet up --trace DIR` puts them in `DIR/parts/`). Rows carry
//! class `unknown`: a node cannot tell a packet's class.
//!
//! Lab ground truth (`--trace-lab`) needs a build with `--features lab`; without it the flag is
//! refused before the node starts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use lethe_engine::runtime::trace::{PacketEvent, PacketEventKind, TraceEvents, TraceHook};
use lethe_engine::runtime::Runtime;
use lethe_sim::trace::{
    Class, Kind, LabFields, NodeInfo, Role, TraceEvent, TraceMeta, TraceWriter,
};
use sha2::{Digest, Sha256};

/// How long the writer waits for an event before it looks at its stop flag.
const TRACE_POLL_MS: u64 = 100;

/// The trace flags of `mixnode run` and `gateway run`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TraceArgs {
    /// Write this node's packet events to FILE (trace format v1, with FILE's `.meta.json`
    /// sidecar): arrivals, departures, deliveries and drops, CLOCK_MONOTONIC ns.
    #[arg(long, env = "LETHE_TRACE", value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Also record the lab ground truth (which input left as which output, drawn delay and
    /// residence). Only a build with `--features lab` accepts it.
    #[arg(long, requires = "trace")]
    pub trace_lab: bool,
}

/// The hook to give the runtime, and the node's end, before the runtime starts.
pub struct TraceSetup {
    pub hook: TraceHook,
    events: TraceEvents,
    path: PathBuf,
    lab: bool,
}

impl TraceArgs {
    /// `None` when tracing is off; an error for a lab trace in a build without `lab`.
    pub fn setup(&self) -> Result<Option<TraceSetup>, String> {
        let Some(path) = &self.trace else {
            return Ok(None);
        };
        let (hook, events) = TraceHook::new(self.trace_lab).map_err(|e| e.to_string())?;
        Ok(Some(TraceSetup {
            hook,
            events,
            path: path.clone(),
            lab: self.trace_lab,
        }))
    }
}

/// The running writer; [`NodeTrace::finish`] once the runtime has ended.
pub struct NodeTrace {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Written, String>>,
}

/// What the writer wrote and lost.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub rows: u64,
    /// Events the engine could not queue (the writer fell behind).
    pub dropped: u64,
}

impl TraceSetup {
    /// Opens the part (refusing a path it cannot write) and starts its writer. `local` is the
    /// node's listen address (its name in the trace); `config` anything that identifies the
    /// node's configuration (hashed into the sidecar).
    pub fn start(self, role: Role, local: SocketAddr, config: &str) -> Result<NodeTrace, String> {
        let digest = Sha256::digest(config.as_bytes());
        let config_hash = digest.iter().map(|b| format!("{b:02x}")).collect();
        let mut meta = TraceMeta::new(
            "testnet",
            0,
            config_hash,
            lethe_sim::trace::current_commit(),
        );
        meta.lab = self.lab;
        meta.layers = 3;
        meta.nodes.push(NodeInfo {
            name: local.to_string(),
            role,
            layer: (role == Role::Gateway).then_some(0),
            corrupt: false,
        });
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let writer = TraceWriter::create(&self.path, meta)
            .map_err(|e| format!("--trace {}: {e}", self.path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let events = self.events;
        let path = self.path;
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("lethe-trace".into())
                .spawn(move || write_events(writer, events, &stop, &path))
                .map_err(|e| format!("trace writer: {e}"))?
        };
        Ok(NodeTrace { stop, thread })
    }
}

impl NodeTrace {
    /// Writes what is left and closes the part (call after the runtime has been joined).
    pub fn finish(self) -> Result<Written, String> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.join() {
            Ok(result) => result,
            Err(_) => Err("the trace writer panicked".into()),
        }
    }
}

fn write_events(
    mut writer: TraceWriter,
    events: TraceEvents,
    stop: &AtomicBool,
    path: &Path,
) -> Result<Written, String> {
    let fail = |e: lethe_sim::trace::TraceError| format!("trace {}: {e}", path.display());
    let mut peers: HashMap<SocketAddr, u32> = HashMap::new();
    let poll = Duration::from_millis(TRACE_POLL_MS);
    // After the stop flag, at most one channel's worth is left: the runtime has ended.
    let mut left_after_stop = lethe_engine::runtime::trace::TRACE_CHANNEL_EVENTS;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let wait = if stopping { Duration::ZERO } else { poll };
        let event = match events.next(wait) {
            Ok(Some(event)) => event,
            Ok(None) if stopping => break,
            Ok(None) => continue,
            Err(_closed) => break,
        };
        if stopping {
            if left_after_stop == 0 {
                break;
            }
            left_after_stop -= 1;
        }
        let next_hop = match event.next_hop {
            None => None,
            Some(addr) => Some(match peers.get(&addr) {
                Some(&index) => index,
                None => {
                    let node = NodeInfo {
                        name: addr.to_string(),
                        // Unknown here: the merge takes the role from the peer's own part.
                        role: Role::Mix,
                        layer: None,
                        corrupt: false,
                    };
                    let index = writer.add_node(node).map_err(fail)?;
                    peers.insert(addr, index);
                    index
                }
            }),
        };
        writer.write(&row(&event, next_hop)).map_err(fail)?;
    }
    let rows = writer.events_count();
    writer.finish().map_err(fail)?;
    Ok(Written {
        rows,
        dropped: events.dropped(),
    })
}

fn row(event: &PacketEvent, next_hop: Option<u32>) -> TraceEvent {
    let kind = match event.kind {
        PacketEventKind::Arrive => Kind::Arrive,
        PacketEventKind::Depart => Kind::Depart,
        PacketEventKind::Deliver => Kind::Deliver,
        PacketEventKind::Drop => Kind::Drop,
    };
    let lab = event.lab.map_or(LabFields::default(), |link| LabFields {
        in_packet_id: Some(link.in_packet_id),
        delay_drawn_ns: Some(link.delay_drawn_ns),
        residence_ns: Some(link.residence_ns),
    });
    TraceEvent {
        t_ns: event.t_ns,
        node: 0,
        kind,
        class: Class::Unknown,
        size_bytes: event.size_bytes,
        packet_id: event.packet_id,
        next_hop,
        message_id: None,
        fragment_id: None,
        destination: None,
        drop_reason: event.drop_reason.map(|r| r.label().to_string()),
        lab,
    }
}

/// Starts the node's trace writer once its runtime listens (its address names it); if the
/// part cannot be opened, stops the runtime and fails, so a node never runs untraced when
/// asked to trace.
pub fn start(
    setup: Option<TraceSetup>,
    runtime: Runtime,
    role: Role,
    config: &str,
) -> Result<(Runtime, Option<NodeTrace>), String> {
    let Some(setup) = setup else {
        return Ok((runtime, None));
    };
    match setup.start(role, runtime.local_addr(), config) {
        Ok(trace) => Ok((runtime, Some(trace))),
        Err(e) => {
            runtime.shutdown();
            let _ = runtime.join();
            Err(e)
        }
    }
}

/// Ends a node's trace after its runtime was joined, logging what was written (a trace that
/// fails does not fail the node's shutdown).
pub fn finish(trace: Option<NodeTrace>) {
    match trace.map(NodeTrace::finish) {
        None => {}
        Some(Ok(written)) => tracing::info!(
            rows = written.rows,
            dropped = written.dropped,
            "trace written"
        ),
        Some(Err(e)) => tracing::error!(error = %e, "trace"),
    }
}
