//! SOCKS5 over the mixnet: a local SOCKS5 proxy (`lethe client socks5`) relays each TCP
//! connection as mixnet messages to a service provider (`lethe provider run`), which opens the
//! TCP connection on the client's behalf if its allow-list permits.

pub mod cli;
pub mod ordered;
pub mod protocol;
pub mod provider;
pub mod proxy;
pub mod relay;
pub mod socks5;
