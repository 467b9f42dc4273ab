//! The libp2p behaviour and transport: TCP + noise + yamux, private Kademlia in server mode,
//! identify, ping, control request-response, bulk streams and connection limits.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{connection_limits, identify, kad, noise, ping, tcp, yamux, Swarm};

use crate::config::SwarmConfig;
use crate::protocol::{
    CtlRequest, CtlResponse, CTL_PROTOCOL, IDENTIFY_PROTOCOL, KAD_PROTOCOL, MAX_CTL_REQUEST,
    MAX_CTL_RESPONSE,
};
use crate::Error;

/// Idle connections stay up this long, so the swarm keeps its mesh between pulls.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(3600);

pub type CtlBehaviour = request_response::cbor::Behaviour<CtlRequest, CtlResponse>;

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub limits: connection_limits::Behaviour,
    pub kad: kad::Behaviour<MemoryStore>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub ctl: CtlBehaviour,
    pub stream: libp2p_stream::Behaviour,
}

/// Builds the swarm (not yet listening).
pub fn build(key: Keypair, cfg: &SwarmConfig) -> Result<Swarm<Behaviour>, Error> {
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| behaviour(key, cfg))
        .unwrap_or_else(|never| match never {})
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    Ok(swarm)
}

fn behaviour(key: &Keypair, cfg: &SwarmConfig) -> Behaviour {
    let peer_id = key.public().to_peer_id();

    let mut kcfg = kad::Config::new(KAD_PROTOCOL);
    kcfg.set_provider_record_ttl(Some(cfg.provider_ttl))
        .set_provider_publication_interval(Some(cfg.provider_republish))
        .set_query_timeout(cfg.query_timeout)
        .set_record_ttl(Some(cfg.provider_ttl))
        .set_periodic_bootstrap_interval(Some(Duration::from_secs(60)));
    let store_cfg = MemoryStoreConfig {
        max_records: 256,
        max_value_bytes: 1024,
        max_providers_per_key: 64,
        max_provided_keys: 65_536,
    };
    let mut kad =
        kad::Behaviour::with_config(peer_id, MemoryStore::with_config(peer_id, store_cfg), kcfg);
    // In a cluster every node is reachable: answer queries without waiting for an external
    // address confirmation (libp2p starts in client mode otherwise).
    kad.set_mode(Some(kad::Mode::Server));

    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
            .with_interval(Duration::from_secs(300))
            .with_agent_version(crate::metrics::agent_version(cfg.node_name.as_deref())),
    );

    let codec = request_response::cbor::codec::Codec::default()
        .set_request_size_maximum(MAX_CTL_REQUEST)
        .set_response_size_maximum(MAX_CTL_RESPONSE);
    let ctl = request_response::Behaviour::with_codec(
        codec,
        [(CTL_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(10))
            .with_max_concurrent_streams(256),
    );

    let per_peer = 4;
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(cfg.max_connections))
        .with_max_established_per_peer(Some(per_peer))
        .with_max_pending_incoming(Some(cfg.max_connections.min(128)))
        .with_max_pending_outgoing(Some(cfg.max_connections.min(128)));

    Behaviour {
        limits: connection_limits::Behaviour::new(limits),
        kad,
        identify,
        ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(30))),
        ctl,
        stream: libp2p_stream::Behaviour::new(),
    }
}
