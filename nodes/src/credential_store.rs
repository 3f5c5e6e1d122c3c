//! SQLite store of spent credential tags and of the bandwidth credited to client identities,
//! for gateways.
//!
//! Tables: `spent_tags(tag, spent_at)` and `balances(client, remaining, updated_at)`. A spend
//! is recorded and credited in one transaction ([`SqliteSpentTags::spend_and_credit`]), so a
//! crash never leaves a spent tag without its credit (or a credit without its tag).

use std::path::Path;

use lethe_crypto::coconut::bandwidth::{SpendTag, SpentTags};
use rusqlite::{params, Connection, OptionalExtension};

/// Spent tags in an SQLite database: survives restarts, so a credential spent before a
/// restart is still refused after it.
pub struct SqliteSpentTags {
    conn: Connection,
}

impl SqliteSpentTags {
    /// Opens (creating if missing, mode 0600 with its `-wal`/`-shm`) the database at `path`.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let store = Self::init(crate::keyfile::open_private_sqlite(path)?)?;
        crate::keyfile::restrict_sqlite(path)?;
        Ok(store)
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> rusqlite::Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> rusqlite::Result<Self> {
        // WAL for concurrent readers; FULL sync so an acknowledged spend survives power loss
        // (losing it would allow a double spend).
        // Another connection (a second gateway worker) may hold the write lock briefly.
        conn.busy_timeout(std::time::Duration::from_millis(
            crate::limits::SQLITE_BUSY_TIMEOUT_MS,
        ))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS spent_tags (
                 tag BLOB PRIMARY KEY,
                 spent_at INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS balances (
                 client BLOB PRIMARY KEY,
                 remaining INTEGER NOT NULL,
                 updated_at INTEGER NOT NULL
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

    /// Bandwidth (bytes) credited to `client` and not yet charged; 0 if never credited.
    pub fn balance(&self, client: &[u8; 32]) -> rusqlite::Result<u64> {
        let remaining: Option<i64> = self
            .conn
            .query_row(
                "SELECT remaining FROM balances WHERE client = ?1",
                params![&client[..]],
                |r| r.get(0),
            )
            .optional()?;
        Ok(remaining.map_or(0, |r| u64::try_from(r).unwrap_or(0)))
    }

    /// Records `tag` and credits `amount` to `client`, in one transaction. `Ok(None)`: the tag
    /// was already spent (nothing credited); `Ok(Some(balance))`: the new balance.
    pub fn spend_and_credit(
        &mut self,
        tag: &SpendTag,
        client: &[u8; 32],
        amount: u64,
    ) -> rusqlite::Result<Option<u64>> {
        let now = now_s();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO spent_tags (tag, spent_at) VALUES (?1, ?2)",
            params![&tag.0[..], now],
        )?;
        if inserted != 1 {
            return Ok(None); // rolled back on drop (nothing was written)
        }
        let amount = i64::try_from(amount).unwrap_or(i64::MAX);
        // Saturating add in SQL: min(remaining + amount, i64::MAX) without overflow.
        tx.execute(
            "INSERT INTO balances (client, remaining, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(client) DO UPDATE SET
                 remaining = CASE WHEN remaining > 9223372036854775807 - excluded.remaining
                                  THEN 9223372036854775807
                                  ELSE remaining + excluded.remaining END,
                 updated_at = excluded.updated_at",
            params![&client[..], amount, now],
        )?;
        let balance: i64 = tx.query_row(
            "SELECT remaining FROM balances WHERE client = ?1",
            params![&client[..]],
            |r| r.get(0),
        )?;
        tx.commit()?;
        Ok(Some(u64::try_from(balance).unwrap_or(0)))
    }

    /// Charges `bytes` to `client` (never below zero); returns the new balance.
    pub fn charge(&mut self, client: &[u8; 32], bytes: u64) -> rusqlite::Result<u64> {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.conn.execute(
            "UPDATE balances SET remaining = max(remaining - ?2, 0), updated_at = ?3
             WHERE client = ?1",
            params![&client[..], bytes, now_s()],
        )?;
        self.balance(client)
    }
}

fn now_s() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i64::try_from(now).unwrap_or(i64::MAX)
}

impl SpentTags for SqliteSpentTags {
    type Error = rusqlite::Error;

    /// One `INSERT OR IGNORE`: check and record are a single atomic statement.
    fn mark_spent(&mut self, tag: &SpendTag) -> Result<bool, Self::Error> {
        let now = now_s();
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

    #[test]
    fn credit_once_and_charge() {
        let mut s = SqliteSpentTags::in_memory().unwrap();
        let (client, tag) = ([1u8; 32], SpendTag([9; 32]));
        assert_eq!(s.balance(&client).unwrap(), 0);
        assert_eq!(s.spend_and_credit(&tag, &client, 1000).unwrap(), Some(1000));
        assert_eq!(s.spend_and_credit(&tag, &client, 1000).unwrap(), None);
        assert!(!s.mark_spent(&tag).unwrap());
        assert_eq!(s.charge(&client, 300).unwrap(), 700);
        assert_eq!(s.charge(&client, 5000).unwrap(), 0);
        let big = SpendTag([10; 32]);
        assert_eq!(
            s.spend_and_credit(&big, &client, u64::MAX).unwrap(),
            Some(i64::MAX as u64)
        );
        assert_eq!(
            s.spend_and_credit(&SpendTag([11; 32]), &client, 5).unwrap(),
            Some(i64::MAX as u64)
        );
    }
}
