//! SQLite store of spent credential tags, for gateways.

use std::path::Path;

use lethe_crypto::coconut::bandwidth::{SpendTag, SpentTags};
use rusqlite::{params, Connection};

/// Spent tags in an SQLite database: survives restarts, so a credential spent before a
/// restart is still refused after it.
pub struct SqliteSpentTags {
    conn: Connection,
}

impl SqliteSpentTags {
    /// Opens (creating if missing) the database at `path`.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        Self::init(Connection::open(path)?)
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> rusqlite::Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> rusqlite::Result<Self> {
        // WAL for concurrent readers; FULL sync so an acknowledged spend survives power loss
        // (losing it would allow a double spend).
        // Another connection (a second gateway worker) may hold the write lock briefly.
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS spent_tags (
                 tag BLOB PRIMARY KEY,
                 spent_at INTEGER NOT NULL
             ) WITHOUT ROWID;",
        )?;
        Ok(Self { conn })
    }

    /// Number of recorded tags.
    pub fn len(&self) -> rusqlite::Result<u64> {
        self.conn
            .query_row("SELECT COUNT(*) FROM spent_tags", [], |r| r.get(0))
    }

    /// Whether no tag is recorded.
    pub fn is_empty(&self) -> rusqlite::Result<bool> {
        Ok(self.len()? == 0)
    }
}

impl SpentTags for SqliteSpentTags {
    type Error = rusqlite::Error;

    /// One `INSERT OR IGNORE`: check and record are a single atomic statement.
    fn mark_spent(&mut self, tag: &SpendTag) -> Result<bool, Self::Error> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        let inserted = self.conn.execute(
            "INSERT OR IGNORE INTO spent_tags (tag, spent_at) VALUES (?1, ?2)",
            params![&tag.0[..], now],
        )?;
        Ok(inserted == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_once() {
        let mut s = SqliteSpentTags::in_memory().unwrap();
        let t = SpendTag([7; 32]);
        assert!(s.mark_spent(&t).unwrap());
        assert!(!s.mark_spent(&t).unwrap());
        assert!(s.mark_spent(&SpendTag([8; 32])).unwrap());
        assert_eq!(s.len().unwrap(), 2);
    }
}
