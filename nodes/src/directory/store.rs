//! The directory's SQLite state (`directory.sqlite`, WAL): registered nodes (the signed
//! descriptor as received, liveness, layer) and the latest published topology, so a restarted
//! directory serves the same epoch and assignments; for a voting authority, the last certified
//! consensus and the evidence of equivocating peers.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::registry::{Entry, Registry};
use crate::authority::round::Evidence;
use crate::topology::{open_descriptor, Signed};

/// File name of the database inside the directory's data dir.
pub const DB_FILE: &str = "directory.sqlite";

pub struct Store {
    conn: Connection,
}

/// The latest publication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredTopology {
    pub epoch: u64,
    pub issued_at_s: u64,
    /// The signed topology JSON as served.
    pub signed_json: String,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Store {
    /// Opens (creating, mode 0600 with its `-wal`/`-shm`) the database at `path`.
    pub fn open(path: &Path) -> rusqlite::Result<Store> {
        let store = Self::init(crate::keyfile::open_private_sqlite(path)?)?;
        crate::keyfile::restrict_sqlite(path)?;
        Ok(store)
    }

    pub fn in_memory() -> rusqlite::Result<Store> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> rusqlite::Result<Store> {
        conn.busy_timeout(std::time::Duration::from_millis(
            crate::limits::SQLITE_BUSY_TIMEOUT_MS,
        ))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // Losing the last few heartbeats in a power cut is harmless; the epoch is written in
        // the same transaction as the topology, so it never goes backwards on disk.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS nodes (
                 identity TEXT PRIMARY KEY,
                 signed TEXT NOT NULL,
                 layer INTEGER,
                 seq INTEGER NOT NULL,
                 last_seen_ms INTEGER NOT NULL,
                 last_heartbeat_s INTEGER NOT NULL,
                 source TEXT
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS topology (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 epoch INTEGER NOT NULL,
                 issued_at_s INTEGER NOT NULL,
                 signed TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS consensus (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 document TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS evidence (
                 epoch INTEGER NOT NULL,
                 kind TEXT NOT NULL,
                 authority TEXT NOT NULL,
                 first TEXT NOT NULL,
                 second TEXT NOT NULL,
                 PRIMARY KEY (epoch, kind, authority)
             );",
        )?;
        // Databases from before the per-source cap lack the column: their nodes count under
        // no source until they register again.
        if conn.prepare("SELECT source FROM nodes LIMIT 0").is_err() {
            conn.execute_batch("ALTER TABLE nodes ADD COLUMN source TEXT")?;
        }
        Ok(Store { conn })
    }

    /// Loads the stored nodes (re-verifying each descriptor; unreadable rows are reported and
    /// skipped) and the latest topology.
    pub fn load(&self) -> rusqlite::Result<(Vec<Entry>, Vec<String>, Option<StoredTopology>)> {
        let mut statement = self.conn.prepare(
            "SELECT identity, signed, layer, seq, last_seen_ms, last_heartbeat_s, source FROM nodes",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<i64>>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, i64>(5)?,
                row.get::<_, Option<String>>(6)?,
            ))
        })?;
        let mut entries = Vec::new();
        let mut skipped = Vec::new();
        for row in rows {
            let (identity, signed_json, layer, seq, last_seen_ms, last_heartbeat_s, source) = row?;
            let descriptor = serde_json::from_str::<Signed>(&signed_json)
                .map_err(|e| e.to_string())
                .and_then(|signed| open_descriptor(&signed).map_err(|e| e.to_string()))
                .and_then(|d| {
                    if d.identity == identity {
                        Ok(d)
                    } else {
                        Err("identity mismatch".to_string())
                    }
                });
            match descriptor {
                Ok(descriptor) => entries.push(Entry {
                    descriptor,
                    signed_json,
                    layer: layer.and_then(|l| usize::try_from(l).ok()),
                    seq: to_u64(seq),
                    last_seen_ms: to_u64(last_seen_ms),
                    last_heartbeat_s: to_u64(last_heartbeat_s),
                    source: source.and_then(|s| s.parse().ok()),
                }),
                Err(e) => skipped.push(format!("{identity}: {e}")),
            }
        }
        let topology = self
            .conn
            .query_row(
                "SELECT epoch, issued_at_s, signed FROM topology WHERE id = 1",
                [],
                |row| {
                    Ok(StoredTopology {
                        epoch: to_u64(row.get(0)?),
                        issued_at_s: to_u64(row.get(1)?),
                        signed_json: row.get(2)?,
                    })
                },
            )
            .optional()?;
        Ok((entries, skipped, topology))
    }

    /// Writes the current record of each of `upserts` (or deletes it if the registry no longer
    /// has it), in one transaction.
    pub fn save_nodes(
        &mut self,
        registry: &Registry,
        identities: &[String],
    ) -> rusqlite::Result<()> {
        if identities.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        for identity in identities {
            match registry.get(identity) {
                Some(e) => {
                    tx.execute(
                        "INSERT INTO nodes (identity, signed, layer, seq, last_seen_ms, last_heartbeat_s, source)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT (identity) DO UPDATE SET signed = ?2, layer = ?3, seq = ?4,
                             last_seen_ms = ?5, last_heartbeat_s = ?6, source = ?7",
                        params![
                            identity,
                            e.signed_json,
                            e.layer.and_then(|l| i64::try_from(l).ok()),
                            to_i64(e.seq),
                            to_i64(e.last_seen_ms),
                            to_i64(e.last_heartbeat_s),
                            e.source.map(|ip| ip.to_string()),
                        ],
                    )?;
                }
                None => {
                    tx.execute("DELETE FROM nodes WHERE identity = ?1", params![identity])?;
                }
            }
        }
        tx.commit()
    }

    /// Records a heartbeat (liveness only).
    pub fn save_liveness(&self, entry: &Entry) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE nodes SET last_seen_ms = ?2, last_heartbeat_s = ?3 WHERE identity = ?1",
            params![
                entry.descriptor.identity,
                to_i64(entry.last_seen_ms),
                to_i64(entry.last_heartbeat_s)
            ],
        )?;
        Ok(())
    }

    /// The last certified consensus (a `MultiSigned` JSON), if any.
    pub fn load_consensus(&self) -> rusqlite::Result<Option<String>> {
        self.conn
            .query_row("SELECT document FROM consensus WHERE id = 1", [], |row| {
                row.get(0)
            })
            .optional()
    }

    pub fn save_consensus(&self, document: &str) -> rusqlite::Result<()> {
        self.conn.execute(
            "INSERT INTO consensus (id, document) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET document = ?1",
            params![document],
        )?;
        Ok(())
    }

    /// Keeps the first evidence of an authority's equivocation per epoch and kind (one row
    /// each: a peer cannot grow the table faster than one row per epoch and kind).
    pub fn save_evidence(&self, evidence: &Evidence) -> rusqlite::Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO evidence (epoch, kind, authority, first, second)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                to_i64(evidence.epoch),
                evidence.kind,
                evidence.authority,
                evidence.first,
                evidence.second
            ],
        )?;
        Ok(())
    }

    /// Evidence rows stored (operators read them with `sqlite3`; tests count them).
    pub fn evidence_count(&self) -> rusqlite::Result<u64> {
        self.conn
            .query_row("SELECT COUNT(*) FROM evidence", [], |row| {
                row.get::<_, i64>(0)
            })
            .map(to_u64)
    }

    pub fn save_topology(&self, topology: &StoredTopology) -> rusqlite::Result<()> {
        self.conn.execute(
            "INSERT INTO topology (id, epoch, issued_at_s, signed) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET epoch = ?1, issued_at_s = ?2, signed = ?3",
            params![
                to_i64(topology.epoch),
                to_i64(topology.issued_at_s),
                topology.signed_json
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyfile;
    use crate::topology::{now_s, sign, Descriptor, Role, DOMAIN_DESCRIPTOR};

    #[test]
    fn round_trip() {
        let mut store = Store::in_memory().unwrap();
        let admission = crate::directory::admission::Admission {
            private_addresses: true,
            nodes_per_ip_max: 16,
            ..Default::default()
        };
        let mut registry = Registry::new(admission.clone());
        let mut ids = Vec::new();
        for i in 1..=4u8 {
            let seed = [i; 32];
            let d = Descriptor {
                identity: keyfile::hex(&keyfile::ed25519_public(&seed)),
                sphinx_key: keyfile::hex(&[9u8; 32]),
                rotation_id: 1,
                mix_address: format!("127.0.0.1:{}", 2000 + u16::from(i))
                    .parse()
                    .unwrap(),
                role: Role::Mixnode,
                client_url: None,
                metrics_url: None,
                family: None,
                issued_at_s: now_s(),
            };
            let signed = sign(&d, DOMAIN_DESCRIPTOR, &seed).unwrap();
            let json = serde_json::to_string(&signed).unwrap();
            let (_, changed) = registry
                .register(d, json, Some([127, 0, 0, 1].into()), now_s() * 1000)
                .unwrap();
            ids.extend(changed);
        }
        store.save_nodes(&registry, &ids).unwrap();
        let moved = registry.remove(&ids[1]).unwrap();
        let mut changed = moved;
        changed.push(ids[1].clone());
        store.save_nodes(&registry, &changed).unwrap();
        let t = StoredTopology {
            epoch: 7,
            issued_at_s: 5,
            signed_json: "{}".into(),
        };
        store.save_topology(&t).unwrap();
        let (entries, skipped, topology) = store.load().unwrap();
        assert!(skipped.is_empty());
        assert_eq!(topology, Some(t));
        let (restored, repaired, refused) = Registry::from_entries(admission, entries);
        assert!(repaired.is_empty());
        assert!(refused.is_empty());
        assert_eq!(restored.layer_sizes(), registry.layer_sizes());
        for e in registry.entries() {
            assert_eq!(restored.get(&e.descriptor.identity), Some(e));
        }
    }
}
