//! The fixed answers to the housekeeping GETs Cisco clients make between authentication and
//! the tunnel CONNECT: the downloader and update checks under the `iu:1/` prefix the `webvpnc`
//! cookie names, the profile manifest and the `+CSCOT+` localisation tables. The ASA serves
//! its packages there; holdfast has none to offer, so it answers as ocserv does for Cisco
//! clients: 200 with bodies that say "nothing to install, nothing to update". A 404 here stalls
//! the Cisco client's pre-tunnel reconciliation (openconnect never asks for these).
//!
//! Every answer is a constant chosen from the request path alone: no session state is read
//! or created, so serving them before login costs nothing an unauthenticated peer could grow.

/// A canned answer: content type and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canned {
    pub content_type: &'static str,
    pub body: &'static str,
}

/// An empty HTML page: "no portal, no installer for this platform".
const EMPTY_HTML: Canned = Canned { content_type: "text/html; charset=utf-8", body: "<html></html>\n" };
/// An empty profile manifest: no profiles or modules to download.
const EMPTY_MANIFEST: Canned = Canned {
    content_type: "text/xml",
    body: "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<vpn rev=\"1.0\">\n</vpn>\n",
};
/// Version 0,0,0000: older than any installed client, so no update is offered.
const NO_UPDATE: Canned = Canned { content_type: "text/plain", body: "0,0,0000\n" };
/// A downloader that does nothing and succeeds.
const NOOP_DOWNLOADER: Canned = Canned { content_type: "application/x-shellscript", body: "#!/bin/sh\n\nexit 0" };

/// Exact paths (query string ignored).
const EXACT: &[(&str, Canned)] = &[
    ("/1/index.html", EMPTY_HTML),
    ("/1/Linux", EMPTY_HTML),
    ("/1/Linux_64", EMPTY_HTML),
    ("/1/Windows", EMPTY_HTML),
    ("/1/Darwin_i386", EMPTY_HTML),
    ("/logout", EMPTY_HTML),
    ("/1/binaries/update.txt", NO_UPDATE),
    ("/1/VPNManifest.xml", EMPTY_MANIFEST),
    ("/VPNManifest.xml", EMPTY_MANIFEST),
    ("/1/binaries/vpndownloader.sh", NOOP_DOWNLOADER),
];

/// Everything under this prefix (translation tables and other localisation resources).
const CSCOT_PREFIX: &str = "/+CSCOT+/";

/// The canned answer for a GET/HEAD of `target` (origin-form request target), or `None` when
/// the path is not a housekeeping URL.
pub fn lookup(target: &str) -> Option<Canned> {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path.starts_with(CSCOT_PREFIX) {
        return Some(EMPTY_MANIFEST);
    }
    EXACT.iter().find(|(p, _)| *p == path).map(|(_, c)| *c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_paths_and_nothing_else() {
        assert_eq!(lookup("/1/binaries/update.txt").unwrap().body, "0,0,0000\n");
        assert_eq!(lookup("/1/index.html?x=1").unwrap(), EMPTY_HTML);
        assert_eq!(
            lookup("/+CSCOT+/translation-table?type=mo&textdomain=AnyConnect&lang=en-us").unwrap(),
            EMPTY_MANIFEST
        );
        assert_eq!(lookup("/1/binaries/vpndownloader.sh").unwrap().content_type, "application/x-shellscript");
        for other in ["/", "/1/", "/1/binaries/", "/index.html", "/1/VPNManifest.xml/../x", "/+CSCOT+", "/CSCOSSLC/tunnel", ""] {
            assert_eq!(lookup(other), None, "{other}");
        }
    }
}
