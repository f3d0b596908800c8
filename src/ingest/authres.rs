//! `Authentication-Results` (RFC 8601): what a receiving server says it checked, and whether it
//! vouches for the address an automatic reply would go to.
//!
//! Any sender can write this field, so only the copy stamped by the mailbox's own receiving
//! server counts: the topmost one that carries its `authserv-id` (RFC 8601 §5: a server removes
//! or ignores copies claiming its id that arrive from outside, and prepends its own above them).
//! Exchange Online writes its own copy without an id, always above what the sender supplied: for
//! it ([`EXCHANGE_ONLINE`]) the topmost copy is read, with the spam confidence level Exchange
//! stamps beside it.

pub use crate::config::EXCHANGE_ONLINE_AUTHSERV_ID as EXCHANGE_ONLINE;

use super::address::{split_outside_quotes, strip_comments};

/// Exchange's spam confidence level at or above which mail is treated as spam.
const EXCHANGE_SPAM_SCL: i32 = 5;

/// One `Authentication-Results` field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthResults {
    /// The `authserv-id`, lower case; `None` when the field starts with a result (Exchange).
    pub authserv_id: Option<String>,
    pub results: Vec<MethodResult>,
}

/// One `method=result` with its properties (`smtp.mailfrom=…`, `header.d=…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodResult {
    /// Lower case: `spf`, `dkim`, `dmarc`, `compauth`, …
    pub method: String,
    /// Lower case: `pass`, `fail`, `none`, …
    pub result: String,
    /// `(ptype.property lower case, value as written)`, `reason` included as `("reason", …)`.
    pub props: Vec<(String, String)>,
}

impl MethodResult {
    fn prop(&self, name: &str) -> Option<&str> {
        self.props
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Reads one field's value. Comments are dropped, quoted strings kept whole; what cannot be read
/// is skipped (a field nobody understands vouches for nothing).
pub fn parse_header(value: &str) -> AuthResults {
    let segments = split_top_level(&strip_comments(value).0, ';');
    let mut segments = segments.into_iter();
    let mut out = AuthResults::default();
    let Some(first) = segments.next() else {
        return out;
    };
    let words = split_words(&first);
    let rest: Vec<String> = match words.first() {
        // `authserv-id [version]`: a word without `=`.
        Some(word) if !word.contains('=') => {
            out.authserv_id = Some(unquote(word).to_ascii_lowercase());
            Vec::new()
        }
        // No id: the first segment is a result already (Exchange Online).
        Some(_) => vec![first],
        None => Vec::new(),
    };
    for segment in rest.into_iter().chain(segments) {
        let words = split_words(&segment);
        let Some((head, props)) = words.split_first() else {
            continue;
        };
        let Some((method, result)) = head.split_once('=') else {
            // `none`: no method was applied.
            continue;
        };
        let method = method.split('/').next().unwrap_or(method);
        out.results.push(MethodResult {
            method: method.trim().to_ascii_lowercase(),
            result: unquote(result.trim()).to_ascii_lowercase(),
            props: props
                .iter()
                .filter_map(|word| word.split_once('='))
                .map(|(key, value)| (key.trim().to_ascii_lowercase(), unquote(value.trim())))
                .collect(),
        });
    }
    out
}

/// `text` split at `separator` outside quoted strings, each part trimmed, empty ones left out.
fn split_top_level(text: &str, separator: char) -> Vec<String> {
    split_outside_quotes(text, |c| c == separator)
        .into_iter()
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whitespace-separated words outside quoted strings; `key = value` becomes one word.
fn split_words(segment: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    let mut current = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in segment.chars() {
        if escaped {
            escaped = false;
        } else if c == '\\' && quoted {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if !quoted && c.is_whitespace() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            continue;
        }
        current.push(c);
    }
    if !current.is_empty() {
        words.push(current);
    }
    // Join `a = b`, `a= b` and `a =b` into `a=b`.
    let mut joined: Vec<String> = Vec::new();
    for word in words {
        match joined.last_mut() {
            Some(last) if last.ends_with('=') || word.starts_with('=') => last.push_str(&word),
            _ => joined.push(word),
        }
    }
    joined
}

fn unquote(text: &str) -> String {
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => text.to_string(),
    }
}

/// Which check vouched for the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VouchedBy {
    /// SPF `pass` for the envelope sender's domain.
    Spf,
    /// A DKIM signature that verified, with `header.d` aligned to the address's domain.
    Dkim { domain: String },
}

/// Why nothing vouches for the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotVouched {
    /// No `Authentication-Results` from the receiving server at all (it stamps none, or the
    /// configured `authserv_id` is not the one it writes).
    NoStamp,
    /// Exchange rates the message as spam.
    Spam { scl: i32 },
    /// Exchange's stamp without the spam confidence level Exchange writes beside it.
    NoExchangeScl,
    /// The stamp is there; no SPF or DKIM pass for the address's domain. What it says, in short.
    Unverified { said: String },
}

/// The receiving server's own `Authentication-Results` among `fields` (topmost first): the
/// topmost one carrying `authserv_id`, or for [`EXCHANGE_ONLINE`] the topmost one.
pub fn trusted_stamp<'a>(fields: &'a [AuthResults], authserv_id: &str) -> Option<&'a AuthResults> {
    if authserv_id.eq_ignore_ascii_case(EXCHANGE_ONLINE) {
        return fields.first();
    }
    fields.iter().find(|field| {
        field
            .authserv_id
            .as_deref()
            .is_some_and(|id| id.eq_ignore_ascii_case(authserv_id))
    })
}

/// Whether the receiving server (`authserv_id`) vouches for `address`, where an automatic reply
/// would go: SPF `pass` with `smtp.mailfrom` in the address's domain, or DKIM `pass` with
/// `header.d` the address's domain, a parent of it or a subdomain of it (relaxed alignment, no
/// public-suffix list: a `header.d` without a dot never aligns). DMARC and compauth are not
/// read: they vouch for From, which is not where the reply goes. `exchange_scl` is
/// `X-MS-Exchange-Organization-SCL`, read for Exchange Online only.
pub fn vouch(
    fields: &[AuthResults],
    exchange_scl: Option<i32>,
    authserv_id: &str,
    address: &str,
) -> Result<VouchedBy, NotVouched> {
    let Some(stamp) = trusted_stamp(fields, authserv_id) else {
        return Err(NotVouched::NoStamp);
    };
    if authserv_id.eq_ignore_ascii_case(EXCHANGE_ONLINE) {
        match exchange_scl {
            None => return Err(NotVouched::NoExchangeScl),
            Some(scl) if scl >= EXCHANGE_SPAM_SCL => return Err(NotVouched::Spam { scl }),
            Some(_) => {}
        }
    }
    let domain = address
        .rsplit_once('@')
        .map(|(_, domain)| domain.trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default();
    if domain.is_empty() {
        return Err(NotVouched::Unverified {
            said: "the address has no domain".into(),
        });
    }
    for result in stamp.results.iter().filter(|r| r.result == "pass") {
        match result.method.as_str() {
            "spf" => {
                let mailfrom = result.prop("smtp.mailfrom").unwrap_or("");
                let mailfrom_domain = mailfrom.rsplit('@').next().unwrap_or(mailfrom);
                if mailfrom_domain
                    .trim_end_matches('.')
                    .eq_ignore_ascii_case(&domain)
                {
                    return Ok(VouchedBy::Spf);
                }
            }
            "dkim" => {
                let d = result
                    .prop("header.d")
                    .unwrap_or("")
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                if aligned(&d, &domain) {
                    return Ok(VouchedBy::Dkim { domain: d });
                }
            }
            _ => {}
        }
    }
    let said: Vec<String> = stamp
        .results
        .iter()
        .filter(|r| r.method == "spf" || r.method == "dkim")
        .map(|r| {
            let what = match r.method.as_str() {
                "spf" => r
                    .prop("smtp.mailfrom")
                    .map(|v| format!(" smtp.mailfrom={v}")),
                _ => r.prop("header.d").map(|v| format!(" header.d={v}")),
            };
            format!("{}={}{}", r.method, r.result, what.unwrap_or_default())
        })
        .collect();
    Err(NotVouched::Unverified {
        said: if said.is_empty() {
            "no SPF or DKIM result".into()
        } else {
            said.join(", ")
        },
    })
}

/// `d` (a DKIM signing domain) is `domain`, a parent of it or a subdomain of it; never a single
/// label (`com`), which would align with every domain under it.
fn aligned(d: &str, domain: &str) -> bool {
    if !d.contains('.') {
        return false;
    }
    d == domain
        || domain
            .strip_suffix(d)
            .is_some_and(|rest| rest.ends_with('.'))
        || d.strip_suffix(domain)
            .is_some_and(|rest| rest.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(values: &[&str]) -> Vec<AuthResults> {
        values.iter().map(|v| parse_header(v)).collect()
    }

    #[test]
    fn the_syntax_of_rfc_8601_is_read() {
        let field = parse_header(
            "mx.helpdesk.test 1; spf=pass (sender SPF authorized) smtp.mailfrom=\"bounce@Customer.test\";\r\n \
             dkim=pass reason=\"good; signature\" header.d=customer.test header.i=@customer.test; dmarc=fail header.from=x.test",
        );
        assert_eq!(field.authserv_id.as_deref(), Some("mx.helpdesk.test"));
        assert_eq!(field.results.len(), 3);
        assert_eq!(field.results[0].method, "spf");
        assert_eq!(field.results[0].result, "pass");
        assert_eq!(
            field.results[0].prop("smtp.mailfrom"),
            Some("bounce@Customer.test")
        );
        assert_eq!(field.results[1].prop("reason"), Some("good; signature"));
        assert_eq!(field.results[1].prop("header.d"), Some("customer.test"));
        assert_eq!(field.results[2].result, "fail");
        // `none`, comments in odd places, a quoted id.
        let none = parse_header("\"mx (1)\" (comment); none");
        assert_eq!(none.authserv_id.as_deref(), Some("mx (1)"));
        assert!(none.results.is_empty());
        let spaced = parse_header("mx; spf = pass (x(y)z) smtp.mailfrom = a@b.test");
        assert_eq!(spaced.results[0].prop("smtp.mailfrom"), Some("a@b.test"));
        // Exchange Online: no id.
        let exchange = parse_header(
            "spf=pass (sender IP is 192.0.2.1) smtp.mailfrom=customer.test; dkim=none (message not signed) header.d=none;dmarc=none action=none header.from=customer.test;compauth=pass reason=109",
        );
        assert_eq!(exchange.authserv_id, None);
        assert_eq!(exchange.results.len(), 4);
        assert_eq!(
            exchange.results[0].prop("smtp.mailfrom"),
            Some("customer.test")
        );
        assert_eq!(exchange.results[3].method, "compauth");
        assert_eq!(parse_header(""), AuthResults::default());
    }

    #[test]
    fn only_the_receiving_servers_stamp_vouches() {
        let stamped = fields(&[
            "other.test; spf=pass smtp.mailfrom=evil.test",
            "mx.helpdesk.test; spf=fail smtp.mailfrom=a@customer.test",
            "mx.helpdesk.test; spf=pass smtp.mailfrom=a@customer.test",
        ]);
        // The topmost copy with the id says fail; the forged one below it says pass.
        assert_eq!(
            vouch(&stamped, None, "mx.helpdesk.test", "a@customer.test"),
            Err(NotVouched::Unverified {
                said: "spf=fail smtp.mailfrom=a@customer.test".into()
            })
        );
        let good = fields(&[
            "mx.helpdesk.test; spf=pass smtp.mailfrom=a@customer.test",
            "mx.helpdesk.test; spf=fail smtp.mailfrom=a@customer.test",
        ]);
        assert_eq!(
            vouch(&good, None, "MX.helpdesk.test", "bounce@Customer.test"),
            Ok(VouchedBy::Spf)
        );
        // SPF for another domain, DMARC and compauth vouch for nothing here.
        let other = fields(&[
            "mx.helpdesk.test; spf=pass smtp.mailfrom=b@other.test; dmarc=pass header.from=customer.test; compauth=pass",
        ]);
        assert!(matches!(
            vouch(&other, None, "mx.helpdesk.test", "a@customer.test"),
            Err(NotVouched::Unverified { .. })
        ));
        assert_eq!(
            vouch(&other, None, "mx2.helpdesk.test", "a@customer.test"),
            Err(NotVouched::NoStamp)
        );
        assert_eq!(
            vouch(&[], None, "mx.helpdesk.test", "a@customer.test"),
            Err(NotVouched::NoStamp)
        );
    }

    #[test]
    fn dkim_vouches_when_its_domain_is_aligned() {
        let with_d = |d: &str| fields(&[&format!("mx; spf=none; dkim=pass header.d={d}")]);
        for (d, address, ok) in [
            ("customer.test", "a@customer.test", true),
            ("customer.test", "bounces@mail.customer.test", true),
            ("mail.customer.test", "a@customer.test", true),
            ("Customer.Test", "a@customer.test", true),
            ("xcustomer.test", "a@customer.test", false),
            ("test", "a@customer.test", false),
            ("other.test", "a@customer.test", false),
        ] {
            assert_eq!(
                vouch(&with_d(d), None, "mx", address).is_ok(),
                ok,
                "{d} {address}"
            );
        }
        let failed = fields(&["mx; dkim=fail header.d=customer.test"]);
        assert!(vouch(&failed, None, "mx", "a@customer.test").is_err());
    }

    #[test]
    fn exchange_online_reads_the_topmost_stamp_and_its_spam_level() {
        let mail = fields(&[
            "spf=pass (sender IP is 192.0.2.1) smtp.mailfrom=customer.test; dkim=none",
            "spf=fail smtp.mailfrom=customer.test",
        ]);
        assert_eq!(
            vouch(&mail, Some(1), EXCHANGE_ONLINE, "a@customer.test"),
            Ok(VouchedBy::Spf)
        );
        assert_eq!(
            vouch(&mail, Some(-1), EXCHANGE_ONLINE, "a@customer.test"),
            Ok(VouchedBy::Spf)
        );
        assert_eq!(
            vouch(&mail, Some(5), EXCHANGE_ONLINE, "a@customer.test"),
            Err(NotVouched::Spam { scl: 5 })
        );
        assert_eq!(
            vouch(&mail, None, EXCHANGE_ONLINE, "a@customer.test"),
            Err(NotVouched::NoExchangeScl)
        );
    }
}
