//! Tells the code which OpenSSL openssl-sys built against: `cfg(ossl300)` when its headers are
//! 3.0 or later (src/ra/legacy.rs needs SSL_OP_NO_EXTENDED_MASTER_SECRET, bit 0 of the SSL
//! options only from 3.0 on). openssl-sys (`links = "openssl"`) hands its version to the
//! build scripts of the crates that depend on it directly as DEP_OPENSSL_VERSION_NUMBER
//! (hex OPENSSL_VERSION_NUMBER; absent for LibreSSL).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ossl300)");
    println!("cargo::rerun-if-env-changed=DEP_OPENSSL_VERSION_NUMBER");
    let version = std::env::var("DEP_OPENSSL_VERSION_NUMBER")
        .ok()
        .and_then(|v| u64::from_str_radix(&v, 16).ok());
    if version.is_some_and(|v| v >= 0x3000_0000) {
        println!("cargo::rustc-cfg=ossl300");
    }
}
