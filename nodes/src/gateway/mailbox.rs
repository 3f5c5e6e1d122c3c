//! The mailbox: every final-hop delivery for a registered client, in SQLite (WAL), until the
//! client confirms it.
//!
//! One writer thread owns the write connection. It receives the engine's final-hop packets
//! and the sessions' commands (register, confirm), decides on packets with
//! [`lethe_proto::final_hop`] (the mailboxes it asks are this writer's), and applies everything
//! in batched transactions (flushed every [`limits::MAILBOX_FLUSH_MS`] or
//! [`limits::MAILBOX_FLUSH_ROWS`] items). Only after a commit does it push deliveries to
//! connected clients and send SURB-ACKs on: an ACK, or a delivery the client saw, implies the
//! row is durable. Rows are deleted only by the client's `Confirm` (or by retention), so a
//! crash at any point loses nothing. Ids are `AUTOINCREMENT` (monotonic, never reused).
//!
//! Sessions read their backlog through [`Reader`] (separate read connections; WAL lets them
//! read while the writer writes).
//!
//! Clients: mail is stored for a client the writer knows. A completed handshake makes it known
//! in memory only (the newest [`limits::MAILBOX_RECENT_CLIENTS_MAX`] such clients, and any with a live
//! session): a handshake proves only that someone generated a key, so a flood of random
//! identities creates no durable state. A client becomes durable (a row in `clients`, known
//! across restarts) once it uses the gateway: an accepted forward (with admission on, a paid
//! one) or credential, or the first mail stored for it (in the same transaction as that mail,
//! so stored mail always has its client's record). Honest clients forward cover traffic at
//! once, so they are durable within a session's first packets. The table is bounded anyway
//! (open admission makes forwards free): at most `clients_max` rows (beyond, clients stay in
//! memory only, counted), and a row whose client has had no session for `client_idle_days`
//! and has no mail waiting is deleted at the hourly clean-up.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{select, Receiver};
use lethe_engine::runtime::FinalHop;
use lethe_proto::final_hop::{self, FinalHopOutcome, Mailboxes, Refusal, Room};
use rusqlite::{params, Connection, OptionalExtension};

use super::egress::Egress;
use super::live::{Delivery, LiveSessions};
use super::metrics::GatewayMetrics;
use crate::limits;
use crate::proto::DeliveryKind;

/// What sessions ask the writer.
pub enum Command {
    /// The client finished a handshake: store mail for it from now on (known in memory;
    /// durable only if it was already); `done` fires once that holds.
    Register {
        client: [u8; 32],
        done: tokio::sync::oneshot::Sender<()>,
    },
    /// The client used the gateway (accepted forward or credential): record it durably.
    Admit { client: [u8; 32] },
    /// The client handled these deliveries: delete them (only its own).
    Confirm { client: [u8; 32], ids: Vec<u64> },
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Opens (creating, mode 0600 with its `-wal`/`-shm`) the database and its tables.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = crate::keyfile::open_private_sqlite(path)?;
    conn.busy_timeout(Duration::from_millis(limits::SQLITE_BUSY_TIMEOUT_MS))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode: a committed transaction survives a process crash (SIGKILL); only
    // an OS crash or power loss may lose the last few milliseconds.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS clients (
             identity BLOB PRIMARY KEY,
             registered_at INTEGER NOT NULL,
             seen_at INTEGER NOT NULL DEFAULT 0
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS mailbox (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             client BLOB NOT NULL,
             kind INTEGER NOT NULL,
             identifier BLOB NOT NULL,
             bytes BLOB NOT NULL,
             stored_at INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS mailbox_client_id ON mailbox (client, id);
         CREATE INDEX IF NOT EXISTS mailbox_stored_at ON mailbox (stored_at);",
    )?;
    crate::keyfile::restrict_sqlite(path)?;
    add_seen_at(&conn)?;
    Ok(conn)
}

/// Databases written before clients had `seen_at`: the column is added, and a row's last
/// sight is taken to be its registration.
fn add_seen_at(conn: &Connection) -> rusqlite::Result<()> {
    let has_seen_at = conn
        .prepare("SELECT 1 FROM pragma_table_info('clients') WHERE name = 'seen_at'")?
        .exists([])?;
    if !has_seen_at {
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE clients ADD COLUMN seen_at INTEGER NOT NULL DEFAULT 0;
             UPDATE clients SET seen_at = registered_at;
             COMMIT;",
        )?;
    }
    Ok(())
}

/// Read connections for sessions (blocking: call from `spawn_blocking`).
pub struct Reader {
    connections: Vec<Mutex<Connection>>,
}

impl Reader {
    pub fn open(path: &Path) -> rusqlite::Result<Reader> {
        let mut connections = Vec::with_capacity(limits::MAILBOX_READERS);
        for _ in 0..limits::MAILBOX_READERS {
            let conn = Connection::open(path)?;
            conn.busy_timeout(Duration::from_millis(limits::SQLITE_BUSY_TIMEOUT_MS))?;
            connections.push(Mutex::new(conn));
        }
        Ok(Reader { connections })
    }

    fn connection(
        &self,
        client: &[u8; 32],
    ) -> Result<std::sync::MutexGuard<'_, Connection>, String> {
        let index = usize::from(client[0]) % self.connections.len().max(1);
        self.connections
            .get(index)
            .ok_or("no reader")?
            .lock()
            .map_err(|_| "reader lock poisoned".to_string())
    }

    /// Rows waiting for `client`.
    pub fn count(&self, client: &[u8; 32]) -> Result<u32, String> {
        let conn = self.connection(client)?;
        let count: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM mailbox WHERE client = ?1",
                params![&client[..]],
                |row| row.get(0),
            )
            .map_err(|e| e.to_string())?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    /// Up to `limit` rows of `client` with id > `after`, in id order.
    pub fn fetch(
        &self,
        client: &[u8; 32],
        after: u64,
        limit: u32,
    ) -> Result<Vec<Delivery>, String> {
        let conn = self.connection(client)?;
        let mut statement = conn
            .prepare_cached(
                "SELECT id, kind, identifier, bytes FROM mailbox
                 WHERE client = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )
            .map_err(|e| e.to_string())?;
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = statement
            .query_map(params![&client[..], after, limit], |row| {
                let id: i64 = row.get(0)?;
                let kind: u8 = row.get(1)?;
                let identifier: Vec<u8> = row.get(2)?;
                let bytes: Vec<u8> = row.get(3)?;
                Ok((id, kind, identifier, bytes))
            })
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for row in rows {
            let (id, kind, identifier, bytes) = row.map_err(|e| e.to_string())?;
            let (Ok(id), Some(kind), Ok(identifier)) = (
                u64::try_from(id),
                DeliveryKind::from_byte(kind),
                <[u8; 16]>::try_from(identifier.as_slice()),
            ) else {
                continue; // not a row this gateway wrote
            };
            out.push(Delivery {
                id,
                kind,
                identifier,
                bytes,
            });
        }
        Ok(out)
    }
}

/// A row or command waiting for the next commit.
enum Pending {
    Store {
        client: [u8; 32],
        kind: DeliveryKind,
        identifier: [u8; 16],
        bytes: Vec<u8>,
        ack: Option<(SocketAddr, Vec<u8>)>,
    },
    /// A new durable client record.
    Record {
        client: [u8; 32],
    },
    /// A durable client had a session now.
    Seen {
        client: [u8; 32],
    },
    Confirm {
        client: [u8; 32],
        ids: Vec<u64>,
    },
}

pub struct WriterSettings {
    pub retention: Duration,
    /// Durable client records at most.
    pub clients_max: u32,
    /// A record idle (no session) this long, with no mail, is deleted.
    pub client_idle: Duration,
}

/// Clients known from a handshake only, in memory: the newest [`limits::MAILBOX_RECENT_CLIENTS_MAX`].
#[derive(Default)]
struct RecentClients {
    /// Client → the generation of its latest insertion.
    clients: HashMap<[u8; 32], u64>,
    /// Insertions, oldest first; an entry whose generation is not the client's latest is
    /// stale (skipped when evicting, dropped when compacting).
    order: std::collections::VecDeque<([u8; 32], u64)>,
    generation: u64,
}

impl RecentClients {
    fn contains(&self, client: &[u8; 32]) -> bool {
        self.clients.contains_key(client)
    }

    /// Inserts (or refreshes) `client`; returns how many older clients were forgotten.
    fn insert(&mut self, client: [u8; 32]) -> u64 {
        self.generation += 1;
        self.clients.insert(client, self.generation);
        self.order.push_back((client, self.generation));
        let mut forgotten = 0;
        while self.clients.len() > limits::MAILBOX_RECENT_CLIENTS_MAX {
            let Some((oldest, generation)) = self.order.pop_front() else {
                break;
            };
            if self.clients.get(&oldest) == Some(&generation) {
                self.clients.remove(&oldest);
                forgotten += 1;
            }
        }
        // Refreshes leave stale entries behind: compact before they outnumber live ones.
        if self.order.len() > 2 * limits::MAILBOX_RECENT_CLIENTS_MAX {
            let clients = &self.clients;
            self.order
                .retain(|(client, generation)| clients.get(client) == Some(generation));
        }
        forgotten
    }

    fn remove(&mut self, client: &[u8; 32]) {
        self.clients.remove(client);
    }
}

struct Writer {
    conn: Connection,
    live: Arc<LiveSessions>,
    egress: Arc<Egress>,
    metrics: Arc<GatewayMetrics>,
    settings: WriterSettings,
    /// The `clients` table: identity → `seen_at`.
    durable: HashMap<[u8; 32], i64>,
    recent: RecentClients,
    rows: HashMap<[u8; 32], u32>,
    pending: Vec<Pending>,
    oldest_pending: Option<Instant>,
    trace: Option<crate::trace::ClientSideTrace>,
}

/// Mail is stored for a client the writer knows, up to
/// [`limits::MAILBOX_ROWS_PER_CLIENT_MAX`] rows.
impl Mailboxes for Writer {
    fn room(&self, recipient: &[u8; 32]) -> Room {
        if !self.knows(recipient) {
            Room::Unknown
        } else if self.rows.get(recipient).copied().unwrap_or(0)
            >= limits::MAILBOX_ROWS_PER_CLIENT_MAX
        {
            Room::Full
        } else {
            Room::Available
        }
    }
}

/// What the writer is connected to.
pub struct WriterLinks {
    /// Final-hop packets from the engine cores.
    pub final_hops: Receiver<FinalHop>,
    /// Registrations and confirms from sessions.
    pub commands: Receiver<Command>,
    pub live: Arc<LiveSessions>,
    pub egress: Arc<Egress>,
    pub metrics: Arc<GatewayMetrics>,
    /// Set once the cores are stopped: drain, commit, end.
    pub stop: Arc<AtomicBool>,
    /// `--trace`: deliveries, refusals and SURB-ACKs sent on.
    pub trace: Option<crate::trace::ClientSideTrace>,
}

/// Starts the writer thread. It ends once `stop` is set and both channels are drained (or
/// their senders are gone), committing what is pending.
pub fn spawn_writer(
    conn: Connection,
    links: WriterLinks,
    settings: WriterSettings,
) -> Result<std::thread::JoinHandle<()>, String> {
    let WriterLinks {
        final_hops,
        commands,
        live,
        egress,
        metrics,
        stop,
        trace,
    } = links;
    let mut writer = Writer {
        conn,
        live,
        egress,
        metrics,
        settings,
        durable: HashMap::new(),
        recent: RecentClients::default(),
        rows: HashMap::new(),
        pending: Vec::with_capacity(limits::MAILBOX_FLUSH_ROWS),
        oldest_pending: None,
        trace,
    };
    writer.load().map_err(|e| format!("mailbox: {e}"))?;
    writer.clean();
    std::thread::Builder::new()
        .name("lethe-mailbox".into())
        .spawn(move || writer.run(&final_hops, &commands, &stop))
        .map_err(|e| format!("mailbox thread: {e}"))
}

impl Writer {
    fn load(&mut self) -> rusqlite::Result<()> {
        self.load_clients()?;
        self.recount()
    }

    /// Re-reads the `clients` table into memory.
    fn load_clients(&mut self) -> rusqlite::Result<()> {
        let mut statement = self.conn.prepare("SELECT identity, seen_at FROM clients")?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, i64>(1)?))
        })?;
        let mut durable = HashMap::new();
        for row in rows {
            let (identity, seen_at) = row?;
            if let Ok(identity) = <[u8; 32]>::try_from(identity.as_slice()) {
                durable.insert(identity, seen_at);
            }
        }
        drop(statement);
        self.durable = durable;
        self.publish_clients();
        Ok(())
    }

    fn publish_clients(&self) {
        self.metrics
            .clients_durable
            .store(self.durable.len() as u64, Ordering::Relaxed);
    }

    /// Is mail stored for this client? Durable, recently handshaken, or connected now.
    fn knows(&self, client: &[u8; 32]) -> bool {
        self.durable.contains_key(client)
            || self.recent.contains(client)
            || self.live.is_live(client)
    }

    /// Records the client durably (in the next commit), unless it is already or the table is
    /// full (then it is kept in memory: counted).
    fn make_durable(&mut self, client: [u8; 32]) {
        if let Some(seen_at) = self.durable.get_mut(&client) {
            let now = now_s();
            if now.saturating_sub(*seen_at) >= limits::MAILBOX_SEEN_RESOLUTION_S {
                *seen_at = now;
                self.push(Pending::Seen { client });
            }
            return;
        }
        if self.durable.len() >= self.settings.clients_max as usize {
            GatewayMetrics::add(&self.metrics.clients_table_full, 1);
            self.remember(client);
            return;
        }
        self.durable.insert(client, now_s());
        self.recent.remove(&client);
        self.publish_clients();
        self.push(Pending::Record { client });
    }

    /// Known in memory only.
    fn remember(&mut self, client: [u8; 32]) {
        let forgotten = self.recent.insert(client);
        GatewayMetrics::add(&self.metrics.clients_forgotten, forgotten);
    }

    fn recount(&mut self) -> rusqlite::Result<()> {
        self.rows.clear();
        let mut statement = self
            .conn
            .prepare("SELECT client, COUNT(*) FROM mailbox GROUP BY client")?;
        let counts = statement.query_map([], |row| {
            Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, i64>(1)?))
        })?;
        let mut rows = HashMap::new();
        for count in counts {
            let (client, count) = count?;
            if let Ok(client) = <[u8; 32]>::try_from(client.as_slice()) {
                rows.insert(client, u32::try_from(count).unwrap_or(u32::MAX));
            }
        }
        drop(statement);
        self.rows = rows;
        self.publish_rows();
        Ok(())
    }

    fn publish_rows(&self) {
        let total: u64 = self.rows.values().map(|&n| u64::from(n)).sum();
        self.metrics.mailbox_rows.store(total, Ordering::Relaxed);
    }

    fn run(
        mut self,
        final_hops: &Receiver<FinalHop>,
        commands: &Receiver<Command>,
        stop: &AtomicBool,
    ) {
        let mut last_clean = Instant::now();
        let idle = Duration::from_millis(limits::MAILBOX_IDLE_WAIT_MS);
        let flush_after = Duration::from_millis(limits::MAILBOX_FLUSH_MS);
        // Runs until shutdown; each turn handles at most one message, then maybe one commit.
        loop {
            let wait = match self.oldest_pending {
                Some(since) => flush_after.saturating_sub(since.elapsed()),
                None => idle,
            };
            let mut closed = 0;
            select! {
                recv(final_hops) -> hop => match hop {
                    Ok(hop) => self.on_final_hop(&hop),
                    Err(_) => closed += 1,
                },
                recv(commands) -> command => match command {
                    Ok(command) => self.on_command(command),
                    Err(_) => closed += 1,
                },
                default(wait) => {}
            }
            let due = self
                .oldest_pending
                .is_some_and(|since| since.elapsed() >= flush_after);
            if due || self.pending.len() >= limits::MAILBOX_FLUSH_ROWS {
                self.flush();
            }
            if last_clean.elapsed() >= Duration::from_secs(limits::MAILBOX_CLEAN_INTERVAL_S) {
                self.clean();
                last_clean = Instant::now();
            }
            let drained = final_hops.is_empty() && commands.is_empty();
            if stop.load(Ordering::Relaxed) && drained {
                self.flush();
                return;
            }
            if closed > 0 {
                // A sender side is gone (shutdown in progress): do not spin on it.
                std::thread::sleep(Duration::from_millis(limits::MAILBOX_CLOSED_PAUSE_MS));
            }
        }
    }

    fn push(&mut self, pending: Pending) {
        if self.oldest_pending.is_none() {
            self.oldest_pending = Some(Instant::now());
        }
        self.pending.push(pending);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Register { client, done } => {
                if self.durable.contains_key(&client) {
                    self.make_durable(client); // refreshes its seen_at
                } else {
                    self.remember(client);
                }
                // Known from now on (in memory): nothing to wait for.
                let _ = done.send(());
            }
            Command::Admit { client } => self.make_durable(client),
            Command::Confirm { client, ids } => self.push(Pending::Confirm { client, ids }),
        }
    }

    fn on_final_hop(&mut self, hop: &FinalHop) {
        let metrics = self.metrics.clone();
        GatewayMetrics::add(&metrics.final_hop_received, 1);
        let mail = match final_hop::decide(&hop.destination, &hop.identifier, &hop.packet, &*self) {
            FinalHopOutcome::DropCover => {
                if let Some(trace) = &self.trace {
                    trace.refused(&hop.packet, "cover_discarded");
                }
                return GatewayMetrics::add(&metrics.cover_dropped, 1);
            }
            FinalHopOutcome::Refused(refusal) => {
                let (counter, reason) = match refusal {
                    Refusal::Malformed => (&metrics.final_hop_malformed, "malformed"),
                    Refusal::UnknownRecipient => {
                        (&metrics.unknown_destination_dropped, "unknown_recipient")
                    }
                    Refusal::MailboxFull => (&metrics.mailbox_full_dropped, "mailbox_full"),
                };
                if let Some(trace) = &self.trace {
                    trace.refused(&hop.packet, reason);
                }
                return GatewayMetrics::add(counter, 1);
            }
            FinalHopOutcome::Deliver(mail) => mail,
        };
        if let Some(trace) = &self.trace {
            trace.delivered(&hop.packet, mail.recipient);
        }
        // Mail it stores makes its client durable, in the same transaction.
        if !self.durable.contains_key(&mail.recipient) {
            self.make_durable(mail.recipient);
        }
        *self.rows.entry(mail.recipient).or_insert(0) += 1;
        let ack = mail.ack.and_then(|ack| match ack.next_hop() {
            Some(next_hop) => Some((next_hop, ack.packet.to_vec())),
            None => {
                GatewayMetrics::add(&metrics.egress_dropped, 1);
                None
            }
        });
        self.push(Pending::Store {
            client: mail.recipient,
            kind: mail.kind,
            identifier: mail.identifier,
            bytes: mail.bytes.to_vec(),
            ack,
        });
    }

    /// Commits everything pending, then pushes deliveries, sends ACKs, answers registrations.
    fn flush(&mut self) {
        self.oldest_pending = None;
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let mut stored: Vec<(usize, u64)> = Vec::with_capacity(pending.len());
        let mut deleted: Vec<([u8; 32], u32)> = Vec::new();
        let result = commit(&mut self.conn, &pending, &mut stored, &mut deleted);
        if let Err(e) = result {
            // Nothing of this batch is durable: no ACK, no push; counts and records are
            // re-read, and clients whose record was lost stay known in memory.
            GatewayMetrics::add(&self.metrics.database_errors, 1);
            tracing::error!(error = %e, batch = pending.len(), "mailbox commit failed");
            let _ = self.recount();
            let _ = self.load_clients();
            for item in &pending {
                if let Pending::Record { client } = item {
                    if !self.durable.contains_key(client) {
                        self.remember(*client);
                    }
                }
            }
            return;
        }
        for (client, count) in deleted {
            GatewayMetrics::add(&self.metrics.confirms, u64::from(count));
            if let Some(rows) = self.rows.get_mut(&client) {
                *rows = rows.saturating_sub(count);
            }
        }
        GatewayMetrics::add(&self.metrics.final_hop_stored, stored.len() as u64);
        let mut ids = stored.into_iter();
        for (index, item) in pending.into_iter().enumerate() {
            match item {
                Pending::Store {
                    client,
                    kind,
                    identifier,
                    bytes,
                    ack,
                } => {
                    let Some((_, id)) = ids.find(|(i, _)| *i == index) else {
                        continue;
                    };
                    if let Some((next_hop, packet)) = ack {
                        if self.egress.send(next_hop, &packet).is_ok() {
                            GatewayMetrics::add(&self.metrics.acks_forwarded, 1);
                            if let Some(trace) = &self.trace {
                                trace.sent(&packet, next_hop);
                            }
                        }
                    }
                    let delivery = Delivery {
                        id,
                        kind,
                        identifier,
                        bytes,
                    };
                    if self.live.push(&client, delivery) {
                        GatewayMetrics::add(&self.metrics.final_hop_delivered_live, 1);
                    }
                }
                Pending::Record { .. } => {
                    GatewayMetrics::add(&self.metrics.clients_registered, 1);
                }
                Pending::Seen { .. } | Pending::Confirm { .. } => {}
            }
        }
        self.publish_rows();
    }

    /// Deletes rows older than the retention period.
    fn clean(&mut self) {
        let cutoff = now_s().saturating_sub(self.settings.retention.as_secs() as i64);
        match self
            .conn
            .execute("DELETE FROM mailbox WHERE stored_at < ?1", params![cutoff])
        {
            Ok(n) => {
                GatewayMetrics::add(&self.metrics.mailbox_expired, n as u64);
                if n > 0 {
                    let _ = self.recount();
                }
            }
            Err(e) => {
                GatewayMetrics::add(&self.metrics.database_errors, 1);
                tracing::error!(error = %e, "mailbox retention failed");
            }
        }
        self.expire_clients();
    }

    /// Deletes the records of clients idle (no session) for `client_idle` with no mail.
    fn expire_clients(&mut self) {
        // Pending records and sightings first, so the deletion sees them.
        self.flush();
        let cutoff = now_s().saturating_sub(self.settings.client_idle.as_secs() as i64);
        match expire_idle_clients(&self.conn, cutoff) {
            Ok(0) => {}
            Ok(n) => {
                GatewayMetrics::add(&self.metrics.clients_expired, n as u64);
                if self.load_clients().is_err() {
                    GatewayMetrics::add(&self.metrics.database_errors, 1);
                }
            }
            Err(e) => {
                GatewayMetrics::add(&self.metrics.database_errors, 1);
                tracing::error!(error = %e, "mailbox client expiry failed");
            }
        }
    }
}

/// One transaction for a batch: `stored` gets (index in `pending`, row id), `deleted` the
/// confirmed row counts per client.
fn commit(
    conn: &mut Connection,
    pending: &[Pending],
    stored: &mut Vec<(usize, u64)>,
    deleted: &mut Vec<([u8; 32], u32)>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let now = now_s();
        let mut insert = tx.prepare_cached(
            "INSERT INTO mailbox (client, kind, identifier, bytes, stored_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut record = tx.prepare_cached(
            "INSERT OR IGNORE INTO clients (identity, registered_at, seen_at)
             VALUES (?1, ?2, ?2)",
        )?;
        let mut seen = tx.prepare_cached("UPDATE clients SET seen_at = ?2 WHERE identity = ?1")?;
        let mut delete = tx.prepare_cached("DELETE FROM mailbox WHERE id = ?1 AND client = ?2")?;
        for (index, item) in pending.iter().enumerate() {
            match item {
                Pending::Store {
                    client,
                    kind,
                    identifier,
                    bytes,
                    ..
                } => {
                    let id = insert.insert(params![
                        &client[..],
                        *kind as u8,
                        &identifier[..],
                        bytes,
                        now
                    ])?;
                    stored.push((index, u64::try_from(id).unwrap_or(0)));
                }
                Pending::Record { client } => {
                    record.execute(params![&client[..], now])?;
                }
                Pending::Seen { client } => {
                    seen.execute(params![&client[..], now])?;
                }
                Pending::Confirm { client, ids } => {
                    let mut count = 0u32;
                    for &id in ids {
                        let Ok(id) = i64::try_from(id) else { continue };
                        count += delete.execute(params![id, &client[..]])? as u32;
                    }
                    deleted.push((*client, count));
                }
            }
        }
    }
    tx.commit()
}

/// Deletes client records last seen before `cutoff` (seconds) that have no mail waiting.
fn expire_idle_clients(conn: &Connection, cutoff: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM clients WHERE seen_at < ?1
         AND NOT EXISTS (SELECT 1 FROM mailbox WHERE mailbox.client = clients.identity)",
        params![cutoff],
    )
}

/// Is this client registered (a row in `clients`)? For tests and tools.
pub fn is_registered(conn: &Connection, client: &[u8; 32]) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM clients WHERE identity = ?1",
        params![&client[..]],
        |_| Ok(()),
    )
    .optional()
    .map(|row| row.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_sees_committed_rows_in_id_order() {
        let dir = std::env::temp_dir().join(format!("lethe-mailbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.sqlite");
        let mut conn = open(&path).unwrap();
        let reader = Reader::open(&path).unwrap();
        let client = [4u8; 32];
        let pending: Vec<Pending> = (0..3u8)
            .map(|i| Pending::Store {
                client,
                kind: DeliveryKind::Message,
                identifier: [0; 16],
                bytes: vec![i],
                ack: None,
            })
            .collect();
        let (mut stored, mut deleted) = (Vec::new(), Vec::new());
        commit(&mut conn, &pending, &mut stored, &mut deleted).unwrap();
        assert_eq!(reader.count(&client).unwrap(), 3);
        let rows = reader.fetch(&client, 0, 2).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows[0].id < rows[1].id);
        let rest = reader.fetch(&client, rows[1].id, 100).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].bytes, vec![2]);
        // Confirms delete only the client's own rows.
        let confirm = [
            Pending::Confirm {
                client: [9; 32],
                ids: vec![rows[0].id],
            },
            Pending::Confirm {
                client,
                ids: vec![rows[0].id, rows[1].id],
            },
        ];
        deleted.clear();
        commit(&mut conn, &confirm, &mut stored, &mut deleted).unwrap();
        assert_eq!(deleted, vec![([9; 32], 0), (client, 2)]);
        assert_eq!(reader.count(&client).unwrap(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("lethe-mailbox-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn idle_clients_without_mail_expire_and_old_tables_gain_seen_at() {
        let dir = scratch("clients");
        let path = dir.join("gateway.sqlite");
        // A table as written before `seen_at`: one old client with mail, one without.
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE clients (identity BLOB PRIMARY KEY, registered_at INTEGER NOT NULL)
                 WITHOUT ROWID;",
            )
            .unwrap();
            for client in [[1u8; 32], [2; 32]] {
                conn.execute(
                    "INSERT INTO clients (identity, registered_at) VALUES (?1, 100)",
                    params![&client[..]],
                )
                .unwrap();
            }
        }
        let mut conn = open(&path).unwrap();
        let seen: i64 = conn
            .query_row(
                "SELECT seen_at FROM clients WHERE identity = ?1",
                params![&[1u8; 32][..]],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(seen, 100, "seen_at starts at the registration");
        let mail = [Pending::Store {
            client: [1; 32],
            kind: DeliveryKind::Message,
            identifier: [0; 16],
            bytes: vec![1],
            ack: None,
        }];
        let (mut stored, mut deleted) = (Vec::new(), Vec::new());
        commit(&mut conn, &mail, &mut stored, &mut deleted).unwrap();
        // A new record and a sighting of an old one.
        let batch = [
            Pending::Record { client: [3; 32] },
            Pending::Seen { client: [2; 32] },
        ];
        commit(&mut conn, &batch, &mut stored, &mut deleted).unwrap();
        // Idle since 100: [1] has mail and stays; [2] and [3] were seen now.
        assert_eq!(expire_idle_clients(&conn, 1_000).unwrap(), 0);
        // Everyone idle: [1] still has mail; [2] and [3] go.
        assert_eq!(expire_idle_clients(&conn, i64::MAX).unwrap(), 2);
        assert!(is_registered(&conn, &[1; 32]).unwrap());
        assert!(!is_registered(&conn, &[2; 32]).unwrap());
        assert!(!is_registered(&conn, &[3; 32]).unwrap());
        // Reopening a migrated database changes nothing.
        drop(conn);
        let conn = open(&path).unwrap();
        assert!(is_registered(&conn, &[1; 32]).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn recent_clients_keep_the_newest_and_stay_bounded() {
        let mut recent = RecentClients::default();
        let client = |i: usize| {
            let mut c = [0u8; 32];
            c[..8].copy_from_slice(&(i as u64).to_le_bytes());
            c
        };
        let mut forgotten = 0;
        for i in 0..limits::MAILBOX_RECENT_CLIENTS_MAX + 10 {
            forgotten += recent.insert(client(i));
        }
        assert_eq!(forgotten, 10);
        assert!(!recent.contains(&client(9)));
        assert!(recent.contains(&client(10)));
        // Refreshing one client over and over neither evicts others nor grows the queue.
        for _ in 0..3 * limits::MAILBOX_RECENT_CLIENTS_MAX {
            assert_eq!(recent.insert(client(10)), 0);
        }
        assert!(recent.order.len() <= 2 * limits::MAILBOX_RECENT_CLIENTS_MAX + 1);
        // The refreshed client is now the newest: the next eviction takes client 11.
        assert_eq!(recent.insert(client(usize::MAX)), 1);
        assert!(recent.contains(&client(10)));
        assert!(!recent.contains(&client(11)));
        recent.remove(&client(10));
        assert!(!recent.contains(&client(10)));
    }
}
