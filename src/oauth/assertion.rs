//! Certificate credentials: the client assertion (RFC 7523 JWT, RS256) that replaces a client
//! secret, as Entra documents it: header `alg` RS256, `typ` JWT, `x5t#S256` (and `x5t` for older
//! endpoints) = base64url thumbprints of the DER certificate; claims `aud` = the token endpoint,
//! `iss` = `sub` = client_id, a fresh `jti`, `nbf`/`iat` now, `exp` ten minutes later.
//!
//! The key and certificate are read from their files for every assertion, so replacing the files
//! (certificate rotation) takes effect without a restart.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use openssl::x509::X509;

/// How long an assertion is valid.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);

/// A certificate credential loaded from its PEM files.
pub struct ClientCertificate {
    key: PKey<Private>,
    /// base64url(SHA-1(DER)).
    x5t: String,
    /// base64url(SHA-256(DER)).
    x5t_s256: String,
    not_after: SystemTime,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("x5t#S256", &self.x5t_s256)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

impl ClientCertificate {
    /// Reads the certificate (the first PEM certificate in `certificate_file`) and the private
    /// key (PKCS#8 or PKCS#1 PEM, unencrypted) from `private_key_file`, which may be the same
    /// file. Errors name the file and what is wrong, never the key.
    pub fn load(certificate_file: &Path, private_key_file: &Path) -> Result<Self, String> {
        let cert_pem = std::fs::read(certificate_file).map_err(|e| {
            format!(
                "cannot read certificate_file {}: {e}",
                certificate_file.display()
            )
        })?;
        let cert = X509::from_pem(&cert_pem).map_err(|_| {
            format!(
                "certificate_file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                certificate_file.display()
            )
        })?;
        let key_pem = std::fs::read(private_key_file).map_err(|e| {
            format!(
                "cannot read private_key_file {}: {e}",
                private_key_file.display()
            )
        })?;
        let key = PKey::private_key_from_pem(&key_pem).map_err(|_| {
            format!(
                "private_key_file {} holds no unencrypted PEM private key (PKCS#8 or PKCS#1)",
                private_key_file.display()
            )
        })?;
        let matches = cert
            .public_key()
            .map(|public| public.public_eq(&key))
            .unwrap_or(false);
        if !matches {
            return Err(format!(
                "private_key_file {} is not the key of certificate_file {}",
                private_key_file.display(),
                certificate_file.display()
            ));
        }
        if key.rsa().is_err() {
            return Err(format!(
                "private_key_file {} is not an RSA key; Entra certificate credentials use RS256",
                private_key_file.display()
            ));
        }
        let thumbprint = |digest| {
            cert.digest(digest)
                .map(|d| URL_SAFE_NO_PAD.encode(&*d))
                .map_err(|e| format!("cannot hash the certificate: {e}"))
        };
        Ok(ClientCertificate {
            x5t: thumbprint(MessageDigest::sha1())?,
            x5t_s256: thumbprint(MessageDigest::sha256())?,
            not_after: asn1_to_system_time(cert.not_after()).unwrap_or(UNIX_EPOCH),
            key,
        })
    }

    /// The certificate's expiry (notAfter).
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The SHA-1 thumbprint as hex, as the Entra portal shows it under Certificates & secrets.
    pub fn thumbprint_hex(&self) -> String {
        URL_SAFE_NO_PAD
            .decode(&self.x5t)
            .unwrap_or_default()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect()
    }

    /// A fresh signed client assertion for `client_id` at the token endpoint `audience`.
    pub fn assertion(&self, client_id: &str, audience: &str) -> Result<String, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let header = serde_json::json!({
            "alg": "RS256",
            "typ": "JWT",
            "x5t": self.x5t,
            "x5t#S256": self.x5t_s256,
        });
        let claims = serde_json::json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": random_id(),
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME.as_secs(),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = (|| {
            let mut signer = Signer::new(MessageDigest::sha256(), &self.key)?;
            signer.update(signing_input.as_bytes())?;
            signer.sign_to_vec()
        })()
        .map_err(|e| format!("cannot sign the client assertion: {e}"))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

/// 128 random bits as hex, for `jti`.
fn random_id() -> String {
    let mut bytes = [0u8; 16];
    // An all-zero jti would still be unique enough for one assertion; rand_bytes does not fail
    // on a working OpenSSL.
    let _ = openssl::rand::rand_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn asn1_to_system_time(time: &openssl::asn1::Asn1TimeRef) -> Option<SystemTime> {
    let epoch = Asn1Time::from_unix(0).ok()?;
    let diff = epoch.diff(time).ok()?;
    let secs = i64::from(diff.days) * 86_400 + i64::from(diff.secs);
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::rsa::Rsa;
    use openssl::x509::{X509Builder, X509NameBuilder};

    /// A self-signed certificate valid for `days`, and its key, as PEM files in `dir`.
    pub fn write_cert(dir: &Path, days: u32) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "mailintake test").unwrap();
        let name = name.build();
        let mut builder = X509Builder::new().unwrap();
        builder.set_version(2).unwrap();
        builder.set_subject_name(&name).unwrap();
        builder.set_issuer_name(&name).unwrap();
        builder.set_pubkey(&key).unwrap();
        builder
            .set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        builder
            .set_not_after(&Asn1Time::days_from_now(days).unwrap())
            .unwrap();
        builder.sign(&key, MessageDigest::sha256()).unwrap();
        let cert = builder.build();
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&cert_path, cert.to_pem().unwrap()).unwrap();
        std::fs::write(&key_path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        (cert_path, key_path)
    }

    fn part(jwt: &str, index: usize) -> serde_json::Value {
        let segment = jwt.split('.').nth(index).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
    }

    #[test]
    fn assertion_has_entra_headers_and_claims_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = write_cert(dir.path(), 30);
        let certificate = ClientCertificate::load(&cert_path, &key_path).unwrap();
        let aud = "https://login.microsoftonline.com/t/oauth2/v2.0/token";
        let jwt = certificate.assertion("client-1", aud).unwrap();
        let header = part(&jwt, 0);
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["typ"], "JWT");
        let cert = X509::from_pem(&std::fs::read(&cert_path).unwrap()).unwrap();
        let sha256 = URL_SAFE_NO_PAD.encode(&*cert.digest(MessageDigest::sha256()).unwrap());
        let sha1 = URL_SAFE_NO_PAD.encode(&*cert.digest(MessageDigest::sha1()).unwrap());
        assert_eq!(header["x5t#S256"], sha256);
        assert_eq!(header["x5t"], sha1);
        let claims = part(&jwt, 1);
        assert_eq!(claims["aud"], aud);
        assert_eq!(claims["iss"], "client-1");
        assert_eq!(claims["sub"], "client-1");
        assert_eq!(claims["jti"].as_str().unwrap().len(), 32);
        let (nbf, exp) = (
            claims["nbf"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert_eq!(exp - nbf, 600);
        // Every assertion is new.
        let again = certificate.assertion("client-1", aud).unwrap();
        assert_ne!(part(&again, 1)["jti"], claims["jti"]);
        // The signature verifies with the certificate's key.
        let (input, signature) = jwt.rsplit_once('.').unwrap();
        let public_key = cert.public_key().unwrap();
        let mut verifier =
            openssl::sign::Verifier::new(MessageDigest::sha256(), &public_key).unwrap();
        verifier.update(input.as_bytes()).unwrap();
        assert!(
            verifier
                .verify(&URL_SAFE_NO_PAD.decode(signature).unwrap())
                .unwrap()
        );
        // notAfter is read.
        let left = certificate
            .not_after()
            .duration_since(SystemTime::now())
            .unwrap();
        assert!(
            left > Duration::from_secs(29 * 86_400) && left <= Duration::from_secs(30 * 86_400)
        );
        assert_eq!(certificate.thumbprint_hex().len(), 40);
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_named() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        let (cert_path, _) = write_cert(one.path(), 30);
        let (_, other_key) = write_cert(two.path(), 30);
        let error = ClientCertificate::load(&cert_path, &other_key).unwrap_err();
        assert!(
            error.contains("is not the key of certificate_file"),
            "{error}"
        );
        let error = ClientCertificate::load(&other_key, &other_key).unwrap_err();
        assert!(error.contains("holds no PEM certificate"), "{error}");
        assert!(!error.contains("PRIVATE KEY-----\n"), "{error}");
    }
}
