//! Helpers: temporary directories, hand-built traces.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use lethe_sim::trace::{
    Class, Kind, LabFields, NodeInfo, Role, TraceEvent, TraceMeta, TraceWriter,
};

/// A fresh directory under the target directory's tmp (what a previous run left is removed
/// first, so runs do not pile up and the last one stays for a post-mortem).
pub fn temp_dir(name: &str) -> PathBuf {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("lethe-sim-{name}"));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    base
}

pub fn node(name: &str, role: Role, layer: Option<u32>) -> NodeInfo {
    NodeInfo {
        name: name.to_string(),
        role,
        layer,
        corrupt: false,
    }
}

pub fn meta(nodes: Vec<NodeInfo>) -> TraceMeta {
    let mut meta = TraceMeta::new("test", 7, "0".repeat(64), "test".into());
    meta.nodes = nodes;
    meta.layers = 1;
    meta
}

pub fn event(t_ns: u64, node: u32, kind: Kind, packet_id: u64) -> TraceEvent {
    TraceEvent {
        t_ns,
        node,
        kind,
        class: Class::Real,
        size_bytes: 386,
        packet_id,
        next_hop: None,
        message_id: None,
        fragment_id: None,
        destination: None,
        drop_reason: None,
        lab: LabFields::default(),
    }
}

pub fn write_trace(dir: &std::path::Path, meta: TraceMeta, events: &[TraceEvent]) -> PathBuf {
    let path = dir.join("trace.csv");
    let mut writer = TraceWriter::create(&path, meta).unwrap();
    for e in events {
        writer.write(e).unwrap();
    }
    writer.finish().unwrap();
    path
}
