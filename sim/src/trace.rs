//! Trace format v1: one CSV row per packet event, a `#` comment line naming the version, and a
//! sidecar `<trace>.meta.json` (version, seed, config hash, commit, the nodes and their roles).
//! `sim/schema/trace-v1.json` is the machine-readable column list; `sim/README.md` documents it.
//!
//! CSV rather than Parquet: it streams with bounded memory from a writer that has no columnar
//! buffer to hold, needs no dependency, and `pandas.read_csv(path, comment='#')` loads it.
//!
//! The ground truth that links a mix's input packet to its output packet (`in_packet_id`, and
//! `delay_drawn_ns` / `residence_ns`, from which the link follows by subtraction) is written
//! only in lab mode: the `lab` cargo feature must be built in *and* the trace opened with
//! `lab = true`. A writer without it refuses the columns instead of dropping them silently.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The format version, in the comment line, the sidecar and the schema file's name.
pub const TRACE_VERSION: u32 = 1;
/// The first line of every trace (pandas skips it with `comment='#'`).
pub const TRACE_COMMENT: &str = "# lethe-trace v1";
/// Columns every trace has, in order.
pub const COLUMNS: [&str; 12] = [
    "t_ns",
    "node",
    "layer",
    "kind",
    "class",
    "size_bytes",
    "packet_id",
    "next_hop",
    "message_id",
    "fragment_id",
    "destination",
    "drop_reason",
];
/// Columns only a lab trace has, after [`COLUMNS`].
pub const LAB_COLUMNS: [&str; 3] = ["in_packet_id", "delay_drawn_ns", "residence_ns"];
/// A CSV line longer than this is refused (bounded memory on a hostile or corrupt file).
pub const LINE_BYTES_MAX: usize = 4_096;
/// Node names are short identifiers (`c3`, `g0`, `m2.1`): no commas, quotes or `#`.
pub const NODE_NAME_BYTES_MAX: usize = 64;

/// True when this build may write lab columns.
pub const LAB_BUILT: bool = cfg!(feature = "lab");

/// What happened to a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A client (or a mix, for its own loop) hands a new packet to the network.
    Send,
    /// A packet reaches a node from a link.
    Arrive,
    /// A node processed a packet (Sphinx unwrap); written by nodes that see the step.
    Unwrap,
    /// A node drew (or read) a packet's mixing delay; lab data, see the module doc.
    Delay,
    /// A packet leaves a node onto a link (`next_hop`).
    Depart,
    /// A final-hop packet is handed to its recipient (`destination`).
    Deliver,
    /// A packet is lost at a node (`drop_reason`).
    Drop,
}

/// Why a packet exists (ground truth of the sender; no adversary view carries it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Real,
    DropCover,
    LoopCover,
    Ack,
    Reply,
    /// Rows of a real node: a node cannot tell a packet's class (Sphinx hides it); only the
    /// clients' rows carry the ground truth.
    Unknown,
}

/// A node's role in the topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Client,
    Gateway,
    Mix,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Send,
        Kind::Arrive,
        Kind::Unwrap,
        Kind::Delay,
        Kind::Depart,
        Kind::Deliver,
        Kind::Drop,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Kind::Send => "send",
            Kind::Arrive => "arrive",
            Kind::Unwrap => "unwrap",
            Kind::Delay => "delay",
            Kind::Depart => "depart",
            Kind::Deliver => "deliver",
            Kind::Drop => "drop",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl Class {
    pub const ALL: [Class; 6] = [
        Class::Real,
        Class::DropCover,
        Class::LoopCover,
        Class::Ack,
        Class::Reply,
        Class::Unknown,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Class::Real => "real",
            Class::DropCover => "drop_cover",
            Class::LoopCover => "loop_cover",
            Class::Ack => "ack",
            Class::Reply => "reply",
            Class::Unknown => "unknown",
        }
    }

    pub fn parse(name: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Cover traffic: packets sent only to hide the real ones.
    pub const fn is_cover(self) -> bool {
        matches!(self, Class::DropCover | Class::LoopCover)
    }
}

/// The ground-truth columns of a lab trace (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LabFields {
    /// On a `depart`: the `packet_id` that arrived and became this packet.
    pub in_packet_id: Option<u64>,
    pub delay_drawn_ns: Option<u64>,
    pub residence_ns: Option<u64>,
}

impl LabFields {
    pub fn is_empty(&self) -> bool {
        self.in_packet_id.is_none() && self.delay_drawn_ns.is_none() && self.residence_ns.is_none()
    }
}

/// One row. `node`, `next_hop` and `destination` index [`TraceMeta::nodes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    pub t_ns: u64,
    pub node: u32,
    pub kind: Kind,
    pub class: Class,
    pub size_bytes: u32,
    /// The packet as seen on one link: assigned when it departs (or is sent), kept on arrival.
    pub packet_id: u64,
    pub next_hop: Option<u32>,
    pub message_id: Option<u64>,
    pub fragment_id: Option<u32>,
    pub destination: Option<u32>,
    pub drop_reason: Option<String>,
    pub lab: LabFields,
}

/// One node of the traced network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub role: Role,
    /// 1..=layers for mixes, 0 for gateways, none for clients.
    pub layer: Option<u32>,
    /// Shares its mixing with the adversary (the metrics pass vectors through it unmixed).
    #[serde(default)]
    pub corrupt: bool,
}

/// The sidecar: what produced the trace and what its node indices name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceMeta {
    pub format: String,
    pub version: u32,
    /// `sim` (the simulator) or `testnet` (real nodes).
    pub source: String,
    pub seed: u64,
    /// SHA-256 (hex) of the config that produced the trace.
    pub config_hash: String,
    pub commit: String,
    pub lab: bool,
    pub nodes: Vec<NodeInfo>,
    /// Mix layers on a route.
    pub layers: u32,
    /// Mean of the exponential delay drawn per mix hop, ns.
    pub delay_mean_ns: u64,
    /// Mean one-way link latency, ns (the flow matcher's network shift).
    pub link_latency_ns_mean: u64,
}

#[derive(Debug)]
pub enum TraceError {
    Io(io::Error),
    /// Lab columns asked for in a build without the `lab` feature.
    LabNotBuilt,
    /// An event carries lab fields but the trace is not a lab trace.
    LabFieldsRefused,
    Format {
        line: u64,
        what: String,
    },
    Meta(String),
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::Io(e) => write!(f, "trace I/O: {e}"),
            TraceError::LabNotBuilt => write!(
                f,
                "lab columns (input -> output links) need a build with `--features lab`"
            ),
            TraceError::LabFieldsRefused => {
                write!(
                    f,
                    "an event carries lab fields but the trace was not opened in lab mode"
                )
            }
            TraceError::Format { line, what } => write!(f, "trace line {line}: {what}"),
            TraceError::Meta(what) => write!(f, "trace metadata: {what}"),
        }
    }
}

impl std::error::Error for TraceError {}

impl From<io::Error> for TraceError {
    fn from(e: io::Error) -> Self {
        TraceError::Io(e)
    }
}

/// `trace.csv` -> `trace.meta.json`.
pub fn meta_path(trace: &Path) -> PathBuf {
    trace.with_extension("meta.json")
}

impl TraceMeta {
    pub fn new(source: &str, seed: u64, config_hash: String, commit: String) -> TraceMeta {
        TraceMeta {
            format: "lethe-trace".to_string(),
            version: TRACE_VERSION,
            source: source.to_string(),
            seed,
            config_hash,
            commit,
            lab: false,
            nodes: Vec::new(),
            layers: 0,
            delay_mean_ns: 0,
            link_latency_ns_mean: 0,
        }
    }

    pub fn load(trace: &Path) -> Result<TraceMeta, TraceError> {
        let path = meta_path(trace);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| TraceError::Meta(format!("{}: {e}", path.display())))?;
        let meta: TraceMeta = serde_json::from_str(&text)
            .map_err(|e| TraceError::Meta(format!("{}: {e}", path.display())))?;
        meta.check()?;
        Ok(meta)
    }

    fn check(&self) -> Result<(), TraceError> {
        if self.format != "lethe-trace" || self.version != TRACE_VERSION {
            return Err(TraceError::Meta(format!(
                "format {} v{}: this build reads lethe-trace v{TRACE_VERSION}",
                self.format, self.version
            )));
        }
        if u32::try_from(self.nodes.len()).is_err() {
            return Err(TraceError::Meta("too many nodes".into()));
        }
        for node in &self.nodes {
            let bad = |c: char| c == ',' || c == '"' || c == '#' || c.is_whitespace();
            if node.name.is_empty()
                || node.name.len() > NODE_NAME_BYTES_MAX
                || node.name.contains(bad)
            {
                return Err(TraceError::Meta(format!("bad node name {:?}", node.name)));
            }
        }
        Ok(())
    }

    /// Node index by name.
    pub fn node_index(&self) -> HashMap<&str, u32> {
        let pairs = self.nodes.iter().enumerate();
        pairs.map(|(i, n)| (n.name.as_str(), i as u32)).collect()
    }

    pub fn node(&self, index: u32) -> Option<&NodeInfo> {
        self.nodes.get(index as usize)
    }
}

/// Streams events to `<path>` and writes the sidecar next to it; or, made with
/// [`TraceWriter::counting`], only counts them (a benchmark of the simulation alone).
pub struct TraceWriter {
    out: Option<BufWriter<File>>,
    path: PathBuf,
    meta: TraceMeta,
    events_count: u64,
}

impl TraceWriter {
    /// Creates the trace and its sidecar. `meta.lab` needs the `lab` feature.
    pub fn create(path: &Path, meta: TraceMeta) -> Result<TraceWriter, TraceError> {
        if meta.lab && !LAB_BUILT {
            return Err(TraceError::LabNotBuilt);
        }
        meta.check()?;
        let json = serde_json::to_string_pretty(&meta)
            .map_err(|e| TraceError::Meta(format!("encoding: {e}")))?;
        std::fs::write(meta_path(path), json)?;
        let mut out = BufWriter::new(File::create(path)?);
        writeln!(
            out,
            "{TRACE_COMMENT} source={} seed={}",
            meta.source, meta.seed
        )?;
        let mut header = COLUMNS.join(",");
        if meta.lab {
            header.push(',');
            header.push_str(&LAB_COLUMNS.join(","));
        }
        writeln!(out, "{header}")?;
        Ok(TraceWriter {
            out: Some(out),
            path: path.to_path_buf(),
            meta,
            events_count: 0,
        })
    }

    /// A writer that writes nothing, not even the sidecar, and counts the rows.
    pub fn counting(meta: TraceMeta) -> Result<TraceWriter, TraceError> {
        if meta.lab && !LAB_BUILT {
            return Err(TraceError::LabNotBuilt);
        }
        meta.check()?;
        Ok(TraceWriter {
            out: None,
            path: PathBuf::new(),
            meta,
            events_count: 0,
        })
    }

    pub fn meta(&self) -> &TraceMeta {
        &self.meta
    }

    pub fn events_count(&self) -> u64 {
        self.events_count
    }

    /// Adds a node the writer learnt of after it opened (a real node names its peers as it
    /// meets them) and rewrites the sidecar, so the trace is readable at any point. Returns the
    /// node's index.
    pub fn add_node(&mut self, node: NodeInfo) -> Result<u32, TraceError> {
        let index = u32::try_from(self.meta.nodes.len())
            .map_err(|_| TraceError::Meta("too many nodes".into()))?;
        self.meta.nodes.push(node);
        if let Err(e) = self.meta.check() {
            self.meta.nodes.pop();
            return Err(e);
        }
        let json = serde_json::to_string_pretty(&self.meta)
            .map_err(|e| TraceError::Meta(format!("encoding: {e}")))?;
        std::fs::write(meta_path(&self.path), json)?;
        Ok(index)
    }

    pub fn write(&mut self, event: &TraceEvent) -> Result<(), TraceError> {
        if !self.meta.lab && !event.lab.is_empty() {
            return Err(TraceError::LabFieldsRefused);
        }
        let Some(out) = self.out.as_mut() else {
            self.events_count += 1;
            return Ok(());
        };
        let name = |index: Option<u32>| -> Result<&str, TraceError> {
            match index {
                None => Ok(""),
                Some(i) => self
                    .meta
                    .node(i)
                    .map(|n| n.name.as_str())
                    .ok_or_else(|| TraceError::Meta(format!("node index {i} not in metadata"))),
            }
        };
        let node = name(Some(event.node))?;
        let layer = self.meta.node(event.node).and_then(|n| n.layer);
        let reason = event.drop_reason.as_deref().unwrap_or("");
        if reason.contains([',', '"', '#', '\n']) {
            return Err(TraceError::Meta(format!("bad drop reason {reason:?}")));
        }
        write!(out, "{},{},", event.t_ns, node)?;
        write_opt(out, layer)?;
        write!(
            out,
            ",{},{},{},{},{},",
            event.kind.name(),
            event.class.name(),
            event.size_bytes,
            event.packet_id,
            name(event.next_hop)?,
        )?;
        write_opt(out, event.message_id)?;
        out.write_all(b",")?;
        write_opt(out, event.fragment_id)?;
        write!(out, ",{},{}", name(event.destination)?, reason)?;
        if self.meta.lab {
            let lab = &event.lab;
            for value in [lab.in_packet_id, lab.delay_drawn_ns, lab.residence_ns] {
                out.write_all(b",")?;
                write_opt(out, value)?;
            }
        }
        out.write_all(b"\n")?;
        self.events_count += 1;
        Ok(())
    }

    /// Flushes; the trace is complete only after this.
    pub fn finish(mut self) -> Result<TraceMeta, TraceError> {
        if let Some(out) = self.out.as_mut() {
            out.flush()?;
        }
        Ok(self.meta)
    }
}

/// The commit a trace comes from: `LETHE_COMMIT`, else `git rev-parse HEAD`, else `unknown`.
pub fn current_commit() -> String {
    if let Ok(commit) = std::env::var("LETHE_COMMIT") {
        return commit;
    }
    let output = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output();
    match output {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => "unknown".to_string(),
    }
}

/// A value, or nothing for `None` (written in place: a row allocates nothing).
fn write_opt<T: fmt::Display>(out: &mut impl Write, value: Option<T>) -> io::Result<()> {
    match value {
        Some(v) => write!(out, "{v}"),
        None => Ok(()),
    }
}

/// Streams events back (one line in memory at a time).
pub struct TraceReader {
    lines: BufReader<File>,
    meta: TraceMeta,
    names: HashMap<String, u32>,
    lab: bool,
    line_number: u64,
    line: String,
}

impl TraceReader {
    pub fn open(path: &Path) -> Result<TraceReader, TraceError> {
        let meta = TraceMeta::load(path)?;
        let names = meta.node_index();
        let names = names.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let mut reader = TraceReader {
            lines: BufReader::new(File::open(path)?),
            meta,
            names,
            lab: false,
            line_number: 0,
            line: String::new(),
        };
        if !reader.next_line()? || !reader.line.starts_with(TRACE_COMMENT) {
            return Err(reader.error(format!("the first line must start with {TRACE_COMMENT:?}")));
        }
        if !reader.next_line()? {
            return Err(reader.error("no header line".into()));
        }
        let header: Vec<&str> = reader.line.trim_end().split(',').collect();
        let lab_header: Vec<&str> = COLUMNS.iter().chain(LAB_COLUMNS.iter()).copied().collect();
        if header == COLUMNS {
            reader.lab = false;
        } else if header == lab_header {
            reader.lab = true;
        } else {
            return Err(reader.error("header does not match trace v1's columns".into()));
        }
        Ok(reader)
    }

    pub fn meta(&self) -> &TraceMeta {
        &self.meta
    }

    /// True when the trace has the lab columns.
    pub fn is_lab(&self) -> bool {
        self.lab
    }

    fn error(&self, what: String) -> TraceError {
        TraceError::Format {
            line: self.line_number,
            what,
        }
    }

    /// Reads the next line into `self.line`, bounded; false at the end.
    fn next_line(&mut self) -> Result<bool, TraceError> {
        self.line.clear();
        let limit = (LINE_BYTES_MAX + 1) as u64;
        let read = (&mut self.lines).take(limit).read_line(&mut self.line)?;
        self.line_number += 1;
        if read > LINE_BYTES_MAX {
            return Err(self.error(format!("longer than {LINE_BYTES_MAX} bytes")));
        }
        Ok(read > 0)
    }

    /// The next event, `None` at the end.
    pub fn next_event(&mut self) -> Result<Option<TraceEvent>, TraceError> {
        loop {
            if !self.next_line()? {
                return Ok(None);
            }
            let line = self.line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            return self.parse_line().map(Some);
        }
    }

    fn parse_line(&self) -> Result<TraceEvent, TraceError> {
        let fields: Vec<&str> = self.line.trim_end().split(',').collect();
        let expected = COLUMNS.len() + if self.lab { LAB_COLUMNS.len() } else { 0 };
        if fields.len() != expected {
            let what = format!("{} fields, expected {expected}", fields.len());
            return Err(self.error(what));
        }
        let node_of = |name: &str| -> Result<Option<u32>, TraceError> {
            if name.is_empty() {
                return Ok(None);
            }
            let index = self.names.get(name).copied();
            index
                .map(Some)
                .ok_or_else(|| self.error(format!("node {name:?} not in metadata")))
        };
        let node = node_of(fields[1])?.ok_or_else(|| self.error("empty node".into()))?;
        let kind = Kind::parse(fields[3]);
        let kind = kind.ok_or_else(|| self.error(format!("kind {:?}", fields[3])))?;
        let class = Class::parse(fields[4]);
        let class = class.ok_or_else(|| self.error(format!("class {:?}", fields[4])))?;
        let lab = if self.lab {
            LabFields {
                in_packet_id: self.number(fields[12], "in_packet_id")?,
                delay_drawn_ns: self.number(fields[13], "delay_drawn_ns")?,
                residence_ns: self.number(fields[14], "residence_ns")?,
            }
        } else {
            LabFields::default()
        };
        let required = |field: &str, name: &str| -> Result<u64, TraceError> {
            self.number(field, name)?
                .ok_or_else(|| self.error(format!("empty {name}")))
        };
        let size_bytes = u32::try_from(required(fields[5], "size_bytes")?)
            .map_err(|_| self.error("size_bytes out of range".into()))?;
        let fragment_id = match self.number(fields[9], "fragment_id")? {
            None => None,
            Some(v) => {
                Some(u32::try_from(v).map_err(|_| self.error("fragment_id out of range".into()))?)
            }
        };
        Ok(TraceEvent {
            t_ns: required(fields[0], "t_ns")?,
            node,
            kind,
            class,
            size_bytes,
            packet_id: required(fields[6], "packet_id")?,
            next_hop: node_of(fields[7])?,
            message_id: self.number(fields[8], "message_id")?,
            fragment_id,
            destination: node_of(fields[10])?,
            drop_reason: (!fields[11].is_empty()).then(|| fields[11].to_string()),
            lab,
        })
    }

    fn number(&self, field: &str, name: &str) -> Result<Option<u64>, TraceError> {
        if field.is_empty() {
            return Ok(None);
        }
        field
            .parse::<u64>()
            .map(Some)
            .map_err(|_| self.error(format!("{name} {field:?} is not an unsigned integer")))
    }
}

impl Iterator for TraceReader {
    type Item = Result<TraceEvent, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_event().transpose()
    }
}

/// The trace files under `path`: the file itself, `path/trace.csv`, or `path/*/trace.csv` (one
/// per seed), sorted. A directory of a real run (`path/parts/`, see [`crate::merge`]) without
/// its `trace.csv` is merged first.
pub fn find_traces(path: &Path) -> Result<Vec<PathBuf>, TraceError> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let single = path.join("trace.csv");
    if single.is_file() {
        return Ok(vec![single]);
    }
    if path.join(crate::merge::PARTS_DIR).is_dir() {
        return Ok(vec![crate::merge::merge_parts(path)?]);
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let candidate = entry?.path().join("trace.csv");
        if candidate.is_file() {
            found.push(candidate);
        }
    }
    found.sort();
    if found.is_empty() {
        let what = format!("no trace.csv in {} or its subdirectories", path.display());
        return Err(TraceError::Meta(what));
    }
    Ok(found)
}
