//! One core's table of ingress connections: who may connect, who is idle, what to close.
//!
//! Bounds: at most `connections_max` connections per core and `per_ip_max` from one address
//! (IPv6 counted per /64, which one host typically owns). A connection that has not delivered a
//! whole frame for `idle_timeout_us` is closed by the core's sweep; a peer trickling bytes that
//! never complete a frame is idle. When the table is full, a newcomer takes the slot of the
//! connection idle longest, if that one has been idle at least `evict_idle_us`: idle sockets
//! parked by a stranger cannot keep an honest neighbour out.
//!
//! I/O-free: the runtime closes the descriptors this table names.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::RawFd;

/// What may connect to one core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngressLimits {
    pub connections_max: u32,
    pub per_ip_max: u32,
    pub idle_timeout_us: u64,
    pub evict_idle_us: u64,
}

/// The address a per-IP cap counts: IPv4 as is, IPv6 by /64 (IPv4-mapped as IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey(u128);

impl PeerKey {
    pub fn of(ip: IpAddr) -> PeerKey {
        match ip {
            IpAddr::V4(v4) => PeerKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => PeerKey(u128::from(u32::from(v4))),
                // Tag bit 127 set keeps /64 prefixes apart from IPv4 addresses.
                None => PeerKey((u128::from(v6) >> 64) | (1 << 127)),
            },
        }
    }
}

/// The answer to a new connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Serve it under this id.
    Admitted(u64),
    /// Serve it under this id; close `evicted` (its descriptor) to make room.
    AdmittedEvicting { id: u64, evicted: RawFd },
    /// Its address already holds `per_ip_max` connections.
    RefusedPerIp,
    /// The table is full and nobody has been idle long enough to give way.
    RefusedFull,
}

struct Entry {
    fd: RawFd,
    peer: PeerKey,
    last_frame_us: u64,
}

pub struct IngressTable {
    limits: IngressLimits,
    entries: HashMap<u64, Entry>,
    per_peer: HashMap<PeerKey, u32>,
    next_id: u64,
}

impl IngressTable {
    pub fn new(limits: IngressLimits) -> IngressTable {
        assert!(limits.connections_max > 0 && limits.per_ip_max > 0);
        assert!(limits.per_ip_max <= limits.connections_max);
        IngressTable {
            limits,
            entries: HashMap::new(),
            per_peer: HashMap::new(),
            next_id: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Decides on a connection from `ip` (descriptor `fd`) accepted at `now_us`.
    pub fn admit(&mut self, ip: IpAddr, fd: RawFd, now_us: u64) -> Admission {
        let peer = PeerKey::of(ip);
        if self.per_peer.get(&peer).copied().unwrap_or(0) >= self.limits.per_ip_max {
            return Admission::RefusedPerIp;
        }
        let mut evicted = None;
        if self.entries.len() >= self.limits.connections_max as usize {
            let idlest = self
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.last_frame_us)
                .map(|(&id, entry)| (id, entry.last_frame_us));
            match idlest {
                Some((id, last_us))
                    if now_us.saturating_sub(last_us) >= self.limits.evict_idle_us =>
                {
                    evicted = self.remove(id);
                }
                _ => return Admission::RefusedFull,
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(
            id,
            Entry {
                fd,
                peer,
                last_frame_us: now_us,
            },
        );
        *self.per_peer.entry(peer).or_insert(0) += 1;
        debug_assert!(self.entries.len() <= self.limits.connections_max as usize);
        match evicted {
            Some(evicted) => Admission::AdmittedEvicting { id, evicted },
            None => Admission::Admitted(id),
        }
    }

    /// A whole frame arrived on `id`.
    pub fn touch(&mut self, id: u64, now_us: u64) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.last_frame_us = entry.last_frame_us.max(now_us);
        }
    }

    /// Forgets `id` (its task ended or it was evicted); its descriptor, if it was known.
    pub fn remove(&mut self, id: u64) -> Option<RawFd> {
        let entry = self.entries.remove(&id)?;
        if let Some(count) = self.per_peer.get_mut(&entry.peer) {
            *count -= 1;
            if *count == 0 {
                self.per_peer.remove(&entry.peer);
            }
        }
        Some(entry.fd)
    }

    /// Removes every connection idle past the timeout at `now_us`; their descriptors go to `out`.
    pub fn take_idle(&mut self, now_us: u64, out: &mut Vec<RawFd>) {
        let timeout_us = self.limits.idle_timeout_us;
        let idle: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, entry)| now_us.saturating_sub(entry.last_frame_us) >= timeout_us)
            .map(|(&id, _)| id)
            .collect();
        for id in idle {
            if let Some(fd) = self.remove(id) {
                out.push(fd);
            }
        }
    }

    /// Every open descriptor (to close them all at shutdown).
    pub fn descriptors(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.entries.values().map(|entry| entry.fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const LIMITS: IngressLimits = IngressLimits {
        connections_max: 4,
        per_ip_max: 2,
        idle_timeout_us: 1_000_000,
        evict_idle_us: 100_000,
    };

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    fn admitted(admission: Admission) -> u64 {
        match admission {
            Admission::Admitted(id) | Admission::AdmittedEvicting { id, .. } => id,
            other => panic!("refused: {other:?}"),
        }
    }

    #[test]
    fn one_address_gets_at_most_its_share_and_gets_it_back_on_close() {
        let mut table = IngressTable::new(LIMITS);
        let first = admitted(table.admit(v4(1), 10, 0));
        admitted(table.admit(v4(1), 11, 0));
        assert_eq!(table.admit(v4(1), 12, 0), Admission::RefusedPerIp);
        admitted(table.admit(v4(2), 13, 0));
        assert_eq!(table.remove(first), Some(10));
        admitted(table.admit(v4(1), 14, 0));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(PeerKey::of(a), PeerKey::of(b));
        assert_ne!(PeerKey::of(a), PeerKey::of(other));
        let mapped = IpAddr::V6(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped());
        assert_eq!(PeerKey::of(mapped), PeerKey::of(v4(1)));
        assert_ne!(
            PeerKey::of(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            PeerKey::of(v4(0))
        );
    }

    #[test]
    fn a_full_table_gives_the_idlest_slot_away_only_once_it_is_idle_long_enough() {
        let mut table = IngressTable::new(LIMITS);
        for (i, last) in [1u8, 2, 3, 4].iter().enumerate() {
            admitted(table.admit(v4(*last), 20 + i as i32, 0));
        }
        for id in 1..4 {
            table.touch(id, 90_000); // connection 0 (fd 20) stays idle since 0
        }
        assert_eq!(table.admit(v4(9), 30, 50_000), Admission::RefusedFull);
        match table.admit(v4(9), 30, 100_000) {
            Admission::AdmittedEvicting { evicted, .. } => assert_eq!(evicted, 20),
            other => panic!("{other:?}"),
        }
        assert_eq!(table.len(), 4);
        // The evicted connection's task removes it later: nothing to remove any more.
        assert_eq!(table.remove(0), None);
    }

    #[test]
    fn the_sweep_takes_exactly_the_connections_idle_past_the_timeout() {
        let mut table = IngressTable::new(LIMITS);
        let quiet = admitted(table.admit(v4(1), 40, 0));
        let busy = admitted(table.admit(v4(2), 41, 0));
        table.touch(busy, 900_000);
        let mut idle = Vec::new();
        table.take_idle(999_999, &mut idle);
        assert!(idle.is_empty());
        table.take_idle(1_000_000, &mut idle);
        assert_eq!(idle, vec![40]);
        assert_eq!(table.remove(quiet), None);
        assert_eq!(table.len(), 1);
        assert_eq!(table.descriptors().collect::<Vec<_>>(), vec![41]);
    }

    #[test]
    fn many_connects_and_closes_leave_no_per_address_residue() {
        let mut table = IngressTable::new(LIMITS);
        for round in 0..10_000u64 {
            let ip = v4((round % 200) as u8);
            let id = admitted(table.admit(ip, 7, round));
            table.touch(id, round + 1);
            assert_eq!(table.remove(id), Some(7));
        }
        assert!(table.is_empty());
        assert!(table.per_peer.is_empty());
    }
}
