//! Trace v1: round trip, the CSV's shape (what `pandas.read_csv(path, comment='#')` needs),
//! the schema file, and the lab columns refused without the `lab` feature.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{event, meta, node, temp_dir, write_trace};
use lethe_sim::trace::{
    Class, Kind, LabFields, Role, TraceError, TraceReader, TraceWriter, COLUMNS, LAB_COLUMNS,
    TRACE_COMMENT,
};

fn sample_events() -> Vec<lethe_sim::trace::TraceEvent> {
    let mut send = event(1_000, 0, Kind::Send, 1);
    send.next_hop = Some(1);
    send.message_id = Some(42);
    send.fragment_id = Some(0);
    send.destination = Some(0);
    let arrive = event(2_000, 1, Kind::Arrive, 1);
    let mut depart = event(9_000, 1, Kind::Depart, 2);
    depart.next_hop = Some(2);
    depart.class = Class::LoopCover;
    let mut dropped = event(9_500, 2, Kind::Drop, 2);
    dropped.drop_reason = Some("node_down".into());
    vec![send, arrive, depart, dropped]
}

fn three_nodes() -> lethe_sim::trace::TraceMeta {
    meta(vec![
        node("c0", Role::Client, None),
        node("m1.0", Role::Mix, Some(1)),
        node("g0", Role::Gateway, Some(0)),
    ])
}

#[test]
fn events_round_trip_and_the_csv_has_a_pandas_shape() {
    let dir = temp_dir("round-trip");
    let events = sample_events();
    let path = write_trace(&dir, three_nodes(), &events);
    let read: Vec<_> = TraceReader::open(&path)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(read, events);

    // Line 1 a comment, line 2 the header, then rows of exactly the header's width.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with(TRACE_COMMENT));
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header, COLUMNS);
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), events.len());
    for row in &rows {
        assert_eq!(row.split(',').count(), COLUMNS.len(), "{row}");
        assert!(!row.contains('#') && !row.contains('"'), "{row}");
    }
    assert_eq!(rows[0], "1000,c0,,send,real,386,1,m1.0,42,0,c0,");
    assert_eq!(rows[3], "9500,g0,0,drop,real,386,2,,,,,node_down");
    // The sidecar names the version and the nodes.
    let meta = std::fs::read_to_string(dir.join("trace.meta.json")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["version"], 1);
    assert_eq!(meta["nodes"][1]["name"], "m1.0");
}

#[test]
fn the_schema_file_lists_the_columns_in_order() {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../schema/trace-v1.json")).unwrap();
    assert_eq!(schema["version"], 1);
    let names = |key: &str| -> Vec<String> {
        let columns = schema[key].as_array().unwrap();
        columns
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names("columns"), COLUMNS);
    assert_eq!(names("lab_columns"), LAB_COLUMNS);
    let kinds = schema["columns"][3]["values"].as_array().unwrap();
    assert_eq!(kinds.len(), Kind::ALL.len());
    for (value, kind) in kinds.iter().zip(Kind::ALL) {
        assert_eq!(value.as_str().unwrap(), kind.name());
    }
    let classes = schema["columns"][4]["values"].as_array().unwrap();
    for (value, class) in classes.iter().zip(Class::ALL) {
        assert_eq!(value.as_str().unwrap(), class.name());
    }
}

#[test]
fn lab_fields_are_refused_by_a_trace_that_is_not_lab() {
    let dir = temp_dir("lab-refused");
    let path = dir.join("trace.csv");
    let mut writer = TraceWriter::create(&path, three_nodes()).unwrap();
    let mut depart = event(9_000, 1, Kind::Depart, 2);
    depart.lab = LabFields {
        in_packet_id: Some(1),
        delay_drawn_ns: None,
        residence_ns: None,
    };
    assert!(matches!(
        writer.write(&depart),
        Err(TraceError::LabFieldsRefused)
    ));
    // The rest of the row is fine: without the lab field it is written.
    depart.lab = LabFields::default();
    writer.write(&depart).unwrap();
    writer.finish().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("in_packet_id"));
}

#[cfg(not(feature = "lab"))]
#[test]
fn a_lab_trace_is_refused_without_the_lab_feature() {
    let dir = temp_dir("lab-not-built");
    let mut meta = three_nodes();
    meta.lab = true;
    let path = dir.join("trace.csv");
    assert!(matches!(
        TraceWriter::create(&path, meta),
        Err(TraceError::LabNotBuilt)
    ));
    assert!(!path.exists());
    // And the simulator's lab flag with it.
    let mut config = lethe_sim::sim::SimConfig::small(1);
    config.lab = true;
    let result = lethe_sim::sim::run(&config, &path, "test");
    assert!(matches!(
        result,
        Err(lethe_sim::sim::SimError::Trace(TraceError::LabNotBuilt))
    ));
}

#[cfg(feature = "lab")]
#[test]
fn a_lab_trace_round_trips_its_links() {
    let dir = temp_dir("lab-round-trip");
    let mut meta = three_nodes();
    meta.lab = true;
    let mut events = sample_events();
    events[2].lab = LabFields {
        in_packet_id: Some(1),
        delay_drawn_ns: Some(6_000),
        residence_ns: Some(7_000),
    };
    let path = write_trace(&dir, meta, &events);
    let mut reader = TraceReader::open(&path).unwrap();
    assert!(reader.is_lab());
    let read: Vec<_> = (&mut reader).map(|e| e.unwrap()).collect();
    assert_eq!(read, events);
    let text = std::fs::read_to_string(&path).unwrap();
    let header = text.lines().nth(1).unwrap();
    assert!(header.ends_with("in_packet_id,delay_drawn_ns,residence_ns"));
}

#[test]
fn malformed_traces_are_refused_with_their_line() {
    let dir = temp_dir("malformed");
    let path = write_trace(&dir, three_nodes(), &sample_events());
    let text = std::fs::read_to_string(&path).unwrap();
    let cases = [
        text.replacen("# lethe-trace v1", "# something else", 1),
        text.replacen("t_ns,node", "time,node", 1),
        text.replacen("2000,m1.0", "2000,m9.9", 1),
        text.replacen("2000,m1.0", "-5,m1.0", 1),
        text.replacen(",arrive,", ",teleport,", 1),
        format!("{text}1,c0,,send,real\n"),
        format!("{text}{}\n", "9".repeat(5_000)),
    ];
    for (index, bad) in cases.iter().enumerate() {
        std::fs::write(&path, bad).unwrap();
        let result: Result<Vec<_>, _> = match TraceReader::open(&path) {
            Ok(reader) => reader.collect(),
            Err(e) => Err(e),
        };
        assert!(result.is_err(), "case {index} was accepted");
    }
}
