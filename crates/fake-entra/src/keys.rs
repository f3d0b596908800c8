//! The RSA signing key, its self-signed certificate, and RS256 JWT signing and verification.
//!
//! Every fake instance started with the same key signs and verifies the same way: the key ID
//! (`kid` = `x5t`, base64url SHA-1 of the certificate, as Entra does) is derived from a
//! certificate built deterministically from the key, so no state needs to be shared.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::{HasPublic, PKey, PKeyRef, Private};
use openssl::rsa::Rsa;
use openssl::sign::{Signer, Verifier};
use openssl::x509::{X509, X509Builder, X509NameBuilder};
use serde::Serialize;
use serde_json::{Value, json};

use crate::util::{b64url, b64url_decode, random_uuid, sha1, sha256, unix_secs};

/// The RSA key pair that signs access tokens and ID tokens (and can sign client assertions in
/// tests). At least 2048 bits. Cloning is cheap (the key is reference-counted).
#[derive(Clone)]
pub struct SigningKey {
    pkey: PKey<Private>,
    /// A self-signed certificate for the key, built deterministically so that `x5t`/`kid` are
    /// the same on every instance that loads the same key.
    cert: X509,
    /// base64url SHA-1 of the certificate's DER: Entra uses this as both `kid` and `x5t`.
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a fresh RSA 2048 key.
    pub fn generate() -> anyhow::Result<SigningKey> {
        let rsa = Rsa::generate(2048).context("generating an RSA 2048 key")?;
        SigningKey::from_pkey(PKey::from_rsa(rsa)?)
    }

    /// Loads a PEM RSA private key, PKCS#8 (`BEGIN PRIVATE KEY`, what `openssl genpkey` writes)
    /// or PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    pub fn from_pem(pem: &[u8]) -> anyhow::Result<SigningKey> {
        let pkey = PKey::private_key_from_pem(pem)
            .context("expected a PEM RSA private key (PKCS#8 or PKCS#1)")?;
        SigningKey::from_pkey(pkey)
    }

    /// Loads a PEM RSA private key from a file (see [`SigningKey::from_pem`]).
    pub fn from_pem_file(path: impl AsRef<Path>) -> anyhow::Result<SigningKey> {
        let path = path.as_ref();
        let pem = std::fs::read(path)
            .with_context(|| format!("reading signing key {}", path.display()))?;
        SigningKey::from_pem(&pem).with_context(|| format!("loading {}", path.display()))
    }

    fn from_pkey(pkey: PKey<Private>) -> anyhow::Result<SigningKey> {
        let rsa = pkey.rsa().context("the signing key must be an RSA key")?;
        if rsa.size() * 8 < 2048 {
            bail!(
                "the signing key has {} bits; Entra uses RSA 2048, use at least that",
                rsa.size() * 8
            );
        }
        let cert = self_signed_certificate(&pkey)?;
        let kid = b64url(&sha1(&cert.to_der()?));
        Ok(SigningKey { pkey, cert, kid })
    }

    /// The private key as PKCS#8 PEM (for writing it to a file another instance loads).
    pub fn to_pem(&self) -> Vec<u8> {
        self.pkey.private_key_to_pem_pkcs8().unwrap_or_default()
    }

    /// The key ID in token headers and the JWKS (`kid` = `x5t`).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The self-signed certificate of this key as PEM: configure it as a client's
    /// `certificate_pem` to let that client authenticate with assertions signed by this key.
    pub fn certificate_pem(&self) -> String {
        self.cert
            .to_pem()
            .map(|p| String::from_utf8_lossy(&p).into_owned())
            .unwrap_or_default()
    }

    /// The public key as a JWK, shaped like an entry of Entra's `discovery/v2.0/keys`.
    pub fn public_jwk(&self) -> Value {
        let (n, e) = match self.pkey.rsa() {
            Ok(rsa) => (b64url(&rsa.n().to_vec()), b64url(&rsa.e().to_vec())),
            Err(_) => (String::new(), String::new()),
        };
        let x5c = self
            .cert
            .to_der()
            .map(|der| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der))
            .unwrap_or_default();
        json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": n,
            "e": e,
            "x5c": [x5c],
        })
    }

    /// Signs `claims` as an RS256 JWT with Entra's header (`typ`, `alg`, `x5t`, `kid`).
    pub(crate) fn sign_jwt<C: Serialize>(&self, claims: &C) -> anyhow::Result<String> {
        let header = JwtHeader {
            typ: "JWT",
            alg: "RS256",
            x5t: Some(&self.kid),
            x5t_s256: None,
            kid: Some(&self.kid),
        };
        sign_jwt_with(&self.pkey, &header, claims)
    }

    /// Makes a client assertion (RFC 7523, as Entra's certificate credentials expect): signed by
    /// this key, header `x5t` = thumbprint of [`SigningKey::certificate_pem`], claims
    /// `aud` = `token_url`, `iss` = `sub` = `client_id`, a fresh `jti`, valid for 10 minutes.
    pub fn sign_client_assertion(
        &self,
        client_id: &str,
        token_url: &str,
    ) -> anyhow::Result<String> {
        let now = unix_secs(SystemTime::now());
        let claims = json!({
            "aud": token_url,
            "iss": client_id,
            "sub": client_id,
            "jti": random_uuid(),
            "nbf": now,
            "iat": now,
            "exp": now + 600,
        });
        let header = JwtHeader {
            typ: "JWT",
            alg: "RS256",
            x5t: Some(&self.kid),
            x5t_s256: None,
            kid: None,
        };
        sign_jwt_with(&self.pkey, &header, &claims)
    }

    /// Verifies an RS256 JWT signed by this key and returns its claims. The reasons are for an
    /// operator reading a log.
    pub(crate) fn verify_jwt(&self, token: &str) -> Result<Value, String> {
        let jwt = DecodedJwt::parse(token)?;
        if jwt.header.get("alg").and_then(Value::as_str) != Some("RS256") {
            return Err(format!(
                "the token's alg is {}, expected RS256",
                jwt.header.get("alg").unwrap_or(&Value::Null)
            ));
        }
        match jwt.header.get("kid").and_then(Value::as_str) {
            Some(kid) if kid == self.kid => {}
            Some(kid) => {
                return Err(format!(
                    "the token was signed with key id '{kid}' but this server's key id is '{}' \
                     (was it issued by a fake started with another signing key?)",
                    self.kid
                ));
            }
            None => return Err("the token header has no kid".to_owned()),
        }
        if !jwt.verify_with(&self.pkey) {
            return Err("the token's signature does not verify with this server's key".to_owned());
        }
        Ok(jwt.claims)
    }
}

/// A JWT header; field order follows Entra's tokens.
#[derive(Serialize)]
pub(crate) struct JwtHeader<'a> {
    pub typ: &'a str,
    pub alg: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x5t: Option<&'a str>,
    #[serde(rename = "x5t#S256", skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<&'a str>,
}

/// Signs `claims` with `pkey` under `header`.
pub(crate) fn sign_jwt_with<C: Serialize>(
    pkey: &PKey<Private>,
    header: &JwtHeader<'_>,
    claims: &C,
) -> anyhow::Result<String> {
    let signing_input = format!(
        "{}.{}",
        b64url(&serde_json::to_vec(header)?),
        b64url(&serde_json::to_vec(claims)?)
    );
    let mut signer = Signer::new(MessageDigest::sha256(), pkey)?;
    signer.update(signing_input.as_bytes())?;
    let signature = signer.sign_to_vec()?;
    Ok(format!("{signing_input}.{}", b64url(&signature)))
}

/// A JWT split into its parts, signature not yet checked.
pub(crate) struct DecodedJwt {
    pub header: Value,
    pub claims: Value,
    signing_input: String,
    signature: Vec<u8>,
}

impl DecodedJwt {
    pub(crate) fn parse(token: &str) -> Result<DecodedJwt, String> {
        let parts: Vec<&str> = token.trim().split('.').collect();
        let [header, claims, signature] = parts.as_slice() else {
            return Err(format!(
                "not a JWT: expected header.payload.signature, got {} part(s)",
                parts.len()
            ));
        };
        let decode_json = |part: &str, what: &str| -> Result<Value, String> {
            let bytes =
                b64url_decode(part).ok_or_else(|| format!("the JWT {what} is not base64url"))?;
            let value: Value = serde_json::from_slice(&bytes)
                .map_err(|e| format!("the JWT {what} is not JSON: {e}"))?;
            if value.is_object() {
                Ok(value)
            } else {
                Err(format!("the JWT {what} is not a JSON object"))
            }
        };
        Ok(DecodedJwt {
            header: decode_json(header, "header")?,
            claims: decode_json(claims, "payload")?,
            signing_input: format!("{header}.{claims}"),
            signature: b64url_decode(signature)
                .ok_or_else(|| "the JWT signature is not base64url".to_owned())?,
        })
    }

    /// True when the RS256 signature verifies with `key`.
    pub(crate) fn verify_with<T: HasPublic>(&self, key: &PKeyRef<T>) -> bool {
        let Ok(mut verifier) = Verifier::new(MessageDigest::sha256(), key) else {
            return false;
        };
        verifier.update(self.signing_input.as_bytes()).is_ok()
            && verifier.verify(&self.signature).unwrap_or(false)
    }
}

/// Thumbprints of a certificate, as client assertions name them.
pub(crate) struct Thumbprints {
    /// base64url SHA-1 of the DER (`x5t`).
    pub sha1: String,
    /// base64url SHA-256 of the DER (`x5t#S256`).
    pub sha256: String,
}

pub(crate) fn thumbprints(cert: &X509) -> Thumbprints {
    let der = cert.to_der().unwrap_or_default();
    Thumbprints {
        sha1: b64url(&sha1(&der)),
        sha256: b64url(&sha256(&der)),
    }
}

/// A self-signed certificate for `pkey`, identical for identical keys: fixed subject and
/// validity, serial derived from the public key, and PKCS#1 v1.5 signatures are deterministic.
fn self_signed_certificate(pkey: &PKey<Private>) -> anyhow::Result<X509> {
    let public_der = pkey.public_key_to_der()?;
    let serial = BigNum::from_slice(&sha1(&public_der)[..16])?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", "fake-entra token signing")?;
    let name = name.build();
    let not_before = Asn1Time::from_unix(1_700_000_000)?; // 2023-11-14
    let not_after = Asn1Time::from_unix(
        unix_secs(SystemTime::UNIX_EPOCH + Duration::from_secs(4_102_444_800)), // 2100-01-01
    )?;
    let mut builder = X509Builder::new()?;
    builder.set_version(2)?;
    let serial = serial.to_asn1_integer()?;
    builder.set_serial_number(&serial)?;
    builder.set_subject_name(&name)?;
    builder.set_issuer_name(&name)?;
    builder.set_not_before(&not_before)?;
    builder.set_not_after(&not_after)?;
    builder.set_pubkey(pkey)?;
    builder.sign(pkey, MessageDigest::sha256())?;
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_gives_same_kid_and_tokens_verify_across_loads() {
        let key = SigningKey::generate().unwrap();
        let again = SigningKey::from_pem(&key.to_pem()).unwrap();
        assert_eq!(key.kid(), again.kid());
        let token = key.sign_jwt(&json!({"a": 1})).unwrap();
        assert_eq!(again.verify_jwt(&token).unwrap()["a"], 1);
        let other = SigningKey::generate().unwrap();
        assert!(other.verify_jwt(&token).unwrap_err().contains("key id"));
    }

    #[test]
    fn pkcs1_pem_loads() {
        let rsa = Rsa::generate(2048).unwrap();
        let pem = rsa.private_key_to_pem().unwrap();
        assert!(String::from_utf8_lossy(&pem).contains("BEGIN RSA PRIVATE KEY"));
        SigningKey::from_pem(&pem).unwrap();
    }

    #[test]
    fn small_keys_are_refused() {
        let rsa = Rsa::generate(1024).unwrap();
        let err = SigningKey::from_pem(&rsa.private_key_to_pem().unwrap()).unwrap_err();
        assert!(format!("{err:#}").contains("2048"));
    }
}
