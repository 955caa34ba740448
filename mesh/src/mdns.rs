//! LAN discovery with mDNS (`iroh-mdns-address-lookup`): nodes of one fleet
//! on one network find each other with no peers configured.
//!
//! ```text
//!  fleet secret ──derive_key──► fleet tag (never the secret)
//!     ├─► service name "_fleetsync-<12 hex>._udp.local": other fleets'
//!     │   records are not even looked at
//!     └─► user data "fs1 <64 hex>": a find must carry our full tag
//!  MdnsAddressLookup (advertises our bound addresses, plugged into the
//!  endpoint) ──subscribe──► run: tagged finds ──► Inner::learn_mdns
//! ```
//!
//! What strangers on the LAN learn is what mDNS always tells: that a node
//! with this id and address exists, and a tag that proves nothing (the
//! handshake still proves membership; the tag only spares dialing nodes
//! of other fleets). Anyone can copy our tag; a copier that is not a
//! member fails the handshake like any stranger.

use iroh::{
    address_lookup::{AddrFilter, UserData},
    EndpointId, TransportAddr,
};
use iroh_mdns_address_lookup::{DiscoveryEvent, MdnsAddressLookup};
use n0_future::{Stream, StreamExt};

/// Addresses taken from one find, at most.
pub const MAX_FIND_ADDRS: usize = 8;

/// The fleet's public tag: a keyed derivation of the secret (so the secret
/// cannot be recovered from it, and it differs from the handshake's key).
pub fn fleet_tag(secret: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key("fleetsync 2026-11 mdns fleet tag v1", secret)
}

/// The mDNS service name: a DNS label (≤ 63 bytes) per fleet.
pub fn service_name(tag: &[u8; 32]) -> String {
    format!("fleetsync-{}", hex::encode(&tag[..6]))
}

/// The user data every member advertises, and every find must carry.
pub fn user_data(tag: &[u8; 32]) -> String {
    format!("fs1 {}", hex::encode(tag))
}

/// mDNS could not be started (no multicast-capable interface, …).
#[derive(Debug, thiserror::Error)]
#[error("mDNS unavailable: {0}")]
pub struct MdnsError(String);

/// The lookup for this fleet, advertising only addresses other hosts can
/// use (loopback is useless on a LAN). Must run inside a tokio runtime.
pub fn lookup(me: EndpointId, tag: &[u8; 32]) -> Result<MdnsAddressLookup, MdnsError> {
    MdnsAddressLookup::builder()
        .service_name(service_name(tag))
        .addr_filter(AddrFilter::new(|addrs| {
            std::borrow::Cow::Owned(addrs.iter().filter(|a| !is_loopback(a)).cloned().collect())
        }))
        .build(me)
        .map_err(|e| MdnsError(e.to_string()))
}

/// The user data as iroh carries it.
pub fn user_data_value(tag: &[u8; 32]) -> UserData {
    user_data(tag)
        .try_into()
        .expect("68 bytes is within the user-data limit")
}

fn is_loopback(a: &TransportAddr) -> bool {
    matches!(a, TransportAddr::Ip(s) if s.ip().is_loopback())
}

/// A member of our fleet found on the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub id: EndpointId,
    pub addrs: Vec<std::net::SocketAddr>,
}

/// The members in a stream of mDNS events: finds that carry our tag and
/// are not ourselves, with their IP addresses (at most [`MAX_FIND_ADDRS`]).
/// Expiries are ignored: a member that went away is dropped by the dial
/// loop's backoff, and mDNS tells again when it is back.
pub fn members(
    events: impl Stream<Item = DiscoveryEvent> + Unpin,
    me: EndpointId,
    tag: [u8; 32],
) -> impl Stream<Item = Found> + Unpin {
    let ours = user_data(&tag);
    events.filter_map(move |ev| match ev {
        DiscoveryEvent::Discovered { endpoint_info, .. } => {
            let tagged = endpoint_info.user_data().map(|u| u.as_ref()) == Some(ours.as_str());
            let addrs: Vec<_> = endpoint_info
                .ip_addrs()
                .copied()
                .take(MAX_FIND_ADDRS)
                .collect();
            (tagged && endpoint_info.endpoint_id != me && !addrs.is_empty()).then_some(Found {
                id: endpoint_info.endpoint_id,
                addrs,
            })
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use iroh::{address_lookup::EndpointInfo, SecretKey};

    #[test]
    fn the_fleet_tag_is_stable_keyed_and_not_the_secret() {
        let s = [7u8; 32];
        assert_eq!(fleet_tag(&s), fleet_tag(&s));
        assert_ne!(fleet_tag(&s), fleet_tag(&[8u8; 32]));
        assert_ne!(fleet_tag(&s), s);
        assert!(!user_data(&fleet_tag(&s)).contains(&hex::encode(s)));
    }

    #[test]
    fn the_service_name_is_a_short_dns_label_and_the_user_data_fits() {
        let tag = fleet_tag(&[1; 32]);
        let name = service_name(&tag);
        assert!(name.len() <= 63, "{name}");
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        assert_eq!(user_data_value(&tag).as_ref(), user_data(&tag));
    }

    fn find(id: EndpointId, user: Option<&str>, addrs: &[&str]) -> DiscoveryEvent {
        let info = EndpointInfo::new(id)
            .with_ip_addrs(addrs.iter().map(|a| a.parse().unwrap()).collect())
            .with_user_data(user.map(|u| u.parse().unwrap()));
        DiscoveryEvent::Discovered {
            endpoint_info: info,
            last_updated: None,
        }
    }

    #[tokio::test]
    async fn only_finds_with_our_tag_and_an_address_are_members() {
        let tag = fleet_tag(&[3; 32]);
        let ours = user_data(&tag);
        let other = user_data(&fleet_tag(&[4; 32]));
        let (me, a, b, c, d) = (
            SecretKey::generate().public(),
            SecretKey::generate().public(),
            SecretKey::generate().public(),
            SecretKey::generate().public(),
            SecretKey::generate().public(),
        );
        let events = vec![
            find(a, Some(&ours), &["10.0.0.2:7300"]),
            find(b, Some(&other), &["10.0.0.3:7300"]),
            find(c, None, &["10.0.0.4:7300"]),
            find(me, Some(&ours), &["10.0.0.1:7300"]),
            find(d, Some(&ours), &[]),
            DiscoveryEvent::Expired { endpoint_id: a },
        ];
        let got: Vec<Found> = members(n0_future::stream::iter(events), me, tag)
            .collect()
            .await;
        assert_eq!(
            got,
            vec![Found {
                id: a,
                addrs: vec!["10.0.0.2:7300".parse().unwrap()]
            }]
        );
    }
}
