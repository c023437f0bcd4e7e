//! Building the engine's [`Config`] from the shared `policy::Config` (what crates/config
//! parses from ASA text): resolved tunnel groups, effective group policies (DfltGrpPolicy
//! inheritance and ASA defaults already applied by `policy`), pools, users, sysopt tcpmss.

use crate::config::{
    AddressPool, AuthMethod, Config, GroupPolicy, Ipv4Net, MtuPolicy, TunnelGroup, User,
};

/// The engine configuration for `cfg`. Everything not in `policy` (limits, fallback timing,
/// reconnect grace, verifier) keeps [`Config::default`]; users without a password
/// (`nopassword`) cannot log in with a password and are left out.
pub fn config_from_policy(cfg: &policy::Config) -> Config {
    let mut out = Config {
        tcpmss: cfg.sysopt.tcpmss,
        ..Config::default()
    };
    let Some(ra) = &cfg.remote_access else {
        return out;
    };
    out.dtls_port = ra.webvpn.dtls_port;
    out.group_list = ra.webvpn.tunnel_group_list;
    out.users = ra
        .users
        .iter()
        .filter_map(|u| {
            Some(User {
                name: u.name.clone(),
                password_hash: u.password_hash.as_ref()?.0.clone(),
            })
        })
        .collect();
    for g in cfg.anyconnect_groups() {
        for p in &g.pools {
            out.pools.insert(
                p.name.clone(),
                AddressPool {
                    first: p.start,
                    last: p.end,
                    mask: p.mask(),
                },
            );
        }
        let e = &g.policy;
        let nets = |want: policy::SplitTunnelPolicy| -> Vec<Ipv4Net> {
            if e.split_tunnel_policy == want {
                e.split_networks
                    .iter()
                    .map(|n| Ipv4Net {
                        addr: n.addr,
                        prefix: n.prefix_len,
                    })
                    .collect()
            } else {
                Vec::new()
            }
        };
        out.group_policies.insert(
            e.name.clone(),
            GroupPolicy {
                split_include: nets(policy::SplitTunnelPolicy::TunnelSpecified),
                split_exclude: nets(policy::SplitTunnelPolicy::ExcludeSpecified),
                dns: e.dns_servers.clone(),
                default_domain: e.default_domain.clone(),
                mtu: Some(e.mtu),
                dtls: e.dtls,
                df_bit_ignore: e.df_bit_ignore,
                dpd_client: e.dpd_client,
                dpd_gateway: e.dpd_gateway,
                keepalive: e.keepalive,
                idle_timeout: e.idle_timeout,
                session_timeout: e.session_timeout,
                mtu_policy: Some(match e.mtu_policy {
                    policy::MtuPolicy::Common => MtuPolicy::Common,
                    policy::MtuPolicy::Split => MtuPolicy::Split,
                }),
                ssl_client: e.ssl_client,
                rekey_time: e.rekey_time,
                rekey_method: e.rekey_method.keyword().to_string(),
            },
        );
        out.tunnel_groups.push(TunnelGroup {
            name: g.name.clone(),
            aliases: g.aliases.clone(),
            default_group_policy: e.name.clone(),
            address_pools: g.pools.iter().map(|p| p.name.clone()).collect(),
            authentication: match g.authentication {
                policy::RaAuthentication::Aaa => AuthMethod::Aaa,
                policy::RaAuthentication::Certificate => AuthMethod::Certificate,
                policy::RaAuthentication::AaaCertificate => AuthMethod::AaaCertificate,
            },
        });
    }
    out
}
