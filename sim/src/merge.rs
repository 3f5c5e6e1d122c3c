//! One trace out of a real run's parts.
//!
//! On a real run every process writes its own trace v1 file, `DIR/parts/<name>.csv` with its
//! sidecar: each node (`lethe mixnode|gateway run --trace`) and each client recorder
//! (loadgen, tests). A part's first node is the process itself; the others are the peers it
//! sent to, named by their listen address as it met them. [`merge_parts`] writes `DIR/trace.csv`
//! (and its sidecar): every row of every part, in time order, with one node list.
//!
//! All processes of a local testnet stamp rows with CLOCK_MONOTONIC, one clock per host, so
//! the rows merge by `t_ns` without any offset (parts from different hosts would not).
//!
//! A node's role comes from its own part when it has one. A peer without a part (a final-hop
//! sink, a node not traced) takes its role from a client part, whose recorder knows the
//! topology it routes through, and else from whichever part named it first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::trace::{NodeInfo, Role, TraceError, TraceEvent, TraceMeta, TraceReader, TraceWriter};

/// The sub-directory of a run's directory that holds the per-process parts.
pub const PARTS_DIR: &str = "parts";
/// Rows a merge holds in memory (it sorts them): about 3 GB of rows. A longer run's parts
/// are refused rather than exhausting memory.
pub const MERGE_ROWS_MAX: usize = 20_000_000;
/// Parts one directory may hold (processes of one run).
pub const PARTS_MAX: usize = 4_096;

/// How sure a part is of a node's role (higher wins).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Claim {
    /// Named as a peer by a node.
    Peer,
    /// Named by a client part (it routes through the topology it lists).
    Client,
    /// The part's own process.
    Own,
}

/// The part files of `dir/parts`, sorted.
pub fn find_parts(dir: &Path) -> Result<Vec<PathBuf>, TraceError> {
    let parts_dir = dir.join(PARTS_DIR);
    let mut parts = Vec::new();
    for entry in std::fs::read_dir(&parts_dir)? {
        let path = entry?.path();
        let is_csv = path.extension().is_some_and(|e| e == "csv");
        if is_csv && path.is_file() {
            if parts.len() == PARTS_MAX {
                return Err(TraceError::Meta(format!(
                    "{}: more than {PARTS_MAX} parts",
                    parts_dir.display()
                )));
            }
            parts.push(path);
        }
    }
    parts.sort();
    if parts.is_empty() {
        let what = format!("no trace part (*.csv) in {}", parts_dir.display());
        return Err(TraceError::Meta(what));
    }
    Ok(parts)
}

/// Merges `dir/parts/*.csv` into `dir/trace.csv` (rewritten if present); returns its path.
pub fn merge_parts(dir: &Path) -> Result<PathBuf, TraceError> {
    let parts = find_parts(dir)?;
    let mut nodes: Vec<(NodeInfo, Claim)> = Vec::new();
    let mut by_name: HashMap<String, u32> = HashMap::new();
    let mut rows: Vec<TraceEvent> = Vec::new();
    let mut metas: Vec<TraceMeta> = Vec::new();
    for part in &parts {
        let mut reader = TraceReader::open(part)?;
        let meta = reader.meta().clone();
        let client_part = meta.nodes.first().is_some_and(|n| n.role == Role::Client);
        // This part's node index -> the merged index.
        let mut map = Vec::with_capacity(meta.nodes.len());
        for (index, node) in meta.nodes.iter().enumerate() {
            let claim = match (index, client_part) {
                (0, _) => Claim::Own,
                (_, true) => Claim::Client,
                (_, false) => Claim::Peer,
            };
            let merged = match by_name.get(&node.name) {
                Some(&merged) => {
                    let slot = &mut nodes[merged as usize];
                    if claim > slot.1 {
                        *slot = (node.clone(), claim);
                    }
                    merged
                }
                None => {
                    let merged = nodes.len() as u32;
                    by_name.insert(node.name.clone(), merged);
                    nodes.push((node.clone(), claim));
                    merged
                }
            };
            map.push(merged);
        }
        let remap = |index: Option<u32>| -> Result<Option<u32>, TraceError> {
            match index {
                None => Ok(None),
                Some(i) => map.get(i as usize).copied().map(Some).ok_or_else(|| {
                    TraceError::Meta(format!("{}: node index {i} unknown", part.display()))
                }),
            }
        };
        while let Some(mut event) = reader.next_event()? {
            if rows.len() == MERGE_ROWS_MAX {
                return Err(TraceError::Meta(format!(
                    "{}: more than {MERGE_ROWS_MAX} rows to merge",
                    dir.display()
                )));
            }
            event.node = remap(Some(event.node))?.unwrap_or(event.node);
            event.next_hop = remap(event.next_hop)?;
            event.destination = remap(event.destination)?;
            rows.push(event);
        }
        metas.push(meta);
    }
    // Stable: rows of one part at the same ns keep their order (an arrival before its drop).
    rows.sort_by_key(|event| event.t_ns);
    let meta = merged_meta(&metas, nodes.into_iter().map(|(n, _)| n).collect());
    let path = dir.join("trace.csv");
    let mut writer = TraceWriter::create(&path, meta)?;
    for event in &rows {
        writer.write(event)?;
    }
    writer.finish()?;
    Ok(path)
}

/// The merged sidecar: the parts' settings (the largest non-zero of each: a node knows no
/// mixing delay, its clients do), and a config hash over every part's.
fn merged_meta(metas: &[TraceMeta], nodes: Vec<NodeInfo>) -> TraceMeta {
    let mut hasher = Sha256::new();
    for meta in metas {
        hasher.update(meta.config_hash.as_bytes());
        hasher.update(b"\n");
    }
    let config_hash: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let first = metas.first();
    let source = first.map_or("testnet", |m| m.source.as_str());
    let commit = first.map_or_else(|| "unknown".to_string(), |m| m.commit.clone());
    let mut meta = TraceMeta::new(source, 0, config_hash, commit);
    meta.seed = metas.iter().map(|m| m.seed).max().unwrap_or(0);
    meta.lab = metas.iter().any(|m| m.lab);
    meta.layers = metas.iter().map(|m| m.layers).max().unwrap_or(0);
    meta.delay_mean_ns = metas.iter().map(|m| m.delay_mean_ns).max().unwrap_or(0);
    meta.link_latency_ns_mean = metas
        .iter()
        .map(|m| m.link_latency_ns_mean)
        .max()
        .unwrap_or(0);
    meta.nodes = nodes;
    meta
}
