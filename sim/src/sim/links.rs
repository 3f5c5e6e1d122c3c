//! When each simulated link is next free: a link delivers in order (as TCP does), so a packet
//! put on it arrives no earlier than the one before it. Looked up for every packet and
//! session message, so the pairs that carry traffic live in arrays indexed by node: one
//! slot per ordered pair of engine nodes (gateways and mixes) and two per client (to its
//! gateway and back). Any other pair, rare (a gateway delivering to a client of another
//! gateway), is in a map.

use std::collections::HashMap;

use super::config::SimConfig;

pub struct Links {
    clients: u32,
    gateways: u32,
    engines: u32,
    /// `engines × engines`, by (from, to) engine index (node index less the clients).
    engine_ns: Vec<u64>,
    /// Per client: to its gateway, then from it.
    client_ns: Vec<u64>,
    other_ns: HashMap<(u32, u32), u64>,
}

enum Slot {
    Engine(usize),
    Client(usize),
    Other,
}

impl Links {
    /// Node indices as the simulator numbers them: clients, gateways, then mixes; client
    /// `c`'s gateway is gateway `c % gateways`.
    pub fn new(config: &SimConfig) -> Links {
        let engines = config.gateways + config.layers * config.mixes_per_layer;
        Links {
            clients: config.clients,
            gateways: config.gateways,
            engines,
            engine_ns: vec![0; engines as usize * engines as usize],
            client_ns: vec![0; config.clients as usize * 2],
            other_ns: HashMap::new(),
        }
    }

    fn slot(&self, from: u32, to: u32) -> Slot {
        let clients = self.clients;
        let gateway_of = |client: u32| clients + client % self.gateways.max(1);
        if from >= clients && to >= clients {
            let (from, to) = (from - clients, to - clients);
            if from < self.engines && to < self.engines {
                return Slot::Engine(from as usize * self.engines as usize + to as usize);
            }
        } else if from < clients && to == gateway_of(from) {
            return Slot::Client(from as usize * 2);
        } else if to < clients && from == gateway_of(to) {
            return Slot::Client(to as usize * 2 + 1);
        }
        Slot::Other
    }

    /// The instant the link `from -> to` is free from (0 for a link never used).
    pub fn free_ns(&mut self, from: u32, to: u32) -> &mut u64 {
        match self.slot(from, to) {
            Slot::Engine(i) => &mut self.engine_ns[i],
            Slot::Client(i) => &mut self.client_ns[i],
            Slot::Other => self.other_ns.entry((from, to)).or_insert(0),
        }
    }
}
