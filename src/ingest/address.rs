//! Addresses as mail really carries them, normalised: the obsolete syntax of RFC 5322 §4.4
//! (white space and comments around the dots and the `@`, source routes, a local part of several
//! quoted words), the bracket-less `Name addr@domain` that some software writes (recovered by a
//! heuristic, with a note), a bare quoted local part, groups, and the case of the domain.
//!
//! Why by hand: mail-parser already splits each address header into names and addresses (RFC 2047
//! names, groups, comments, quoting) and is kept; what it hands over verbatim (`Big Bug
//! bb@bug.com`, `jdoe@machine.  example`, `@a,@b:x@y`) or misreads (`"john doe"@example.com`
//! comes back as the name `john doe` and the address `@example.com`) is put right here. The
//! crates that parse addresses do not fit: `email_address` (lettre's validator) and
//! `email-address-parser` read one addr-spec, the former without the obsolete syntax, and none
//! knows the bracket-less form. Whether an acknowledgement can be *sent* to an address is decided
//! in `reply`, by the same parser the sender uses.
//!
//! Normal form: the local part as written (case kept; quotes only where RFC 5321 needs them), the
//! domain lower case (Unicode lower case for an IDN, RFC 6532), no white space or comments.

use serde::Serialize;

/// A name and address from a header such as From or To.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Party {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub address: String,
}

/// The normalised addresses of one header field and what was repaired or left out, as sentences
/// for the operator (they go into the message's `detail`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    pub parties: Vec<Party>,
    pub notes: Vec<String>,
}

/// What [`normalize`] changed besides the domain's case and needless quotes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Normal {
    address: String,
    /// White space or comments inside the address were removed (obsolete syntax).
    obsolete: bool,
    /// A source route (`@a,@b:`) was dropped.
    route: bool,
}

/// The addresses of header `field` (`From`, `Reply-To`, `Sender`, `To`, `Cc`) as mail-parser
/// read them, normalised. `raw` is the field's raw value, for what mail-parser loses (a bare
/// quoted local part, the text of an empty group). Entries that hold no address at all are left
/// out with a note.
pub(super) fn mailbox_list(
    field: &str,
    parsed: Option<&mail_parser::Address<'_>>,
    raw: Option<&str>,
) -> Addresses {
    let mut out = Addresses::default();
    let Some(parsed) = parsed else {
        return out;
    };
    let raw = raw.unwrap_or("").trim();
    for addr in parsed.iter() {
        let name = addr
            .name()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        let address = addr.address().map(str::trim).filter(|a| !a.is_empty());
        match (name, address) {
            (name, Some(address)) => entry(field, name, address, raw, &mut out),
            (Some(name), None) => match normalize(&name).filter(|_| name.contains('@')) {
                // `From: "bb@bug.com"`: the address written as a quoted name.
                Some(normal) => {
                    out.notes.push(format!(
                        "{field} `\"{name}\"` is a quoted name only: read as the address {}",
                        normal.address
                    ));
                    out.parties.push(Party {
                        name: None,
                        address: normal.address,
                    });
                }
                None => out
                    .notes
                    .push(format!("{field} `{name}` holds no address; left out")),
            },
            (None, None) => {}
        }
    }
    if out.parties.is_empty()
        && out.notes.is_empty()
        && matches!(parsed, mail_parser::Address::Group(_))
    {
        out.notes.push(format!(
            "{field} is an empty group (`{raw}`): it names no address"
        ));
    }
    out
}

/// One name and address from mail-parser, put right and added to `out`.
fn entry(field: &str, name: Option<String>, address: &str, raw: &str, out: &mut Addresses) {
    // `"john doe"@example.com` comes back as the name `john doe` and the address `@example.com`.
    if let Some(name) = &name
        && address.starts_with('@')
        && !address.contains(':')
        && raw.contains(&format!("\"{name}\"{address}"))
        && let Some(normal) = normalize(&format!("\"{name}\"{address}"))
    {
        out.parties.push(Party {
            name: None,
            address: normal.address,
        });
        return;
    }
    if let Some(normal) = normalize(address) {
        if normal.route {
            out.notes.push(format!(
                "{field} `{address}`: the source route was dropped (RFC 5322 §4.4), {}",
                normal.address
            ));
        } else if normal.obsolete {
            out.notes.push(format!(
                "{field} `{address}` is in the obsolete syntax (RFC 5322 §4.4): read as {}",
                normal.address
            ));
        }
        out.parties.push(Party {
            name,
            address: normal.address,
        });
        return;
    }
    if let Some((words, normal)) = without_brackets(address) {
        let name = name.or(words);
        out.notes.push(format!(
            "{field} `{address}` has no angle brackets: read heuristically as {}the address {}",
            name.as_deref()
                .map(|n| format!("the name \"{n}\" and "))
                .unwrap_or_default(),
            normal.address
        ));
        out.parties.push(Party {
            name,
            address: normal.address,
        });
        return;
    }
    out.notes
        .push(format!("{field} `{address}` is not an address; left out"));
}

/// The bracket-less form `Big Bug bb@bug.com` (or `bb@bug.com Big Bug`): exactly one word holds
/// an `@` and is an address; the other words are the name.
fn without_brackets(text: &str) -> Option<(Option<String>, Normal)> {
    let words = split_outside_quotes(text, char::is_whitespace);
    let words: Vec<&str> = words.into_iter().filter(|w| !w.is_empty()).collect();
    let mut with_at = words
        .iter()
        .enumerate()
        .filter(|(_, w)| contains_outside_quotes(w, '@'));
    let (index, address) = with_at.next()?;
    if with_at.next().is_some() || words.len() < 2 {
        return None;
    }
    let normal = normalize(address)?;
    let name = words
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, w)| *w)
        .collect::<Vec<_>>()
        .join(" ");
    let name = name
        .trim_matches(|c: char| c == '"' || c == '(' || c == ')' || c.is_whitespace())
        .to_string();
    Some(((!name.is_empty()).then_some(name), normal))
}

/// The envelope path of `Return-Path` (RFC 5321 §4.4) normalised: `Some("")` for the null path,
/// the address, or the text as written when it is no address (with a note). The source route
/// of the obsolete syntax is dropped.
pub(super) fn return_path(raw: &str) -> (String, Option<String>) {
    let trimmed = raw.trim();
    let bare = trimmed.trim_start_matches('<').trim_end_matches('>').trim();
    if bare.is_empty() {
        return (String::new(), None);
    }
    match normalize(trimmed) {
        Some(normal) => {
            let note = (normal.route || normal.obsolete).then(|| {
                format!(
                    "Return-Path `{trimmed}` read as {}{}",
                    normal.address,
                    if normal.route {
                        " (the source route was dropped, RFC 5321 §4.1.2)"
                    } else {
                        " (obsolete syntax, RFC 5322 §4.4)"
                    }
                )
            });
            (normal.address, note)
        }
        None => (
            bare.to_string(),
            Some(format!("Return-Path `{trimmed}` is not an address")),
        ),
    }
}

/// `text` (one addr-spec, possibly in angle brackets, with comments, obsolete white space or a
/// source route) in the normal form; `None` when it is no address.
fn normalize(text: &str) -> Option<Normal> {
    let (uncommented, had_comment) = strip_comments(text);
    let mut rest = uncommented.trim();
    if let Some(inner) = rest.strip_prefix('<') {
        rest = inner.strip_suffix('>').unwrap_or(inner).trim();
    }
    let mut route = false;
    if rest.starts_with('@') {
        // obs-route: `@a,@b:` before the address.
        let colon = position_outside_quotes(rest, ':')?;
        rest = rest[colon + 1..].trim();
        route = true;
    }
    let at = last_position_outside_quotes(rest, '@')?;
    let (local, domain) = (&rest[..at], &rest[at + 1..]);
    let (local, local_spaced) = normalize_local(local)?;
    let (domain, domain_spaced) = normalize_domain(domain)?;
    Some(Normal {
        address: format!("{local}@{domain}"),
        obsolete: had_comment || local_spaced || domain_spaced,
        route,
    })
}

/// A local part as words (atoms or quoted strings) between dots, white space around them
/// allowed (obs-local-part); returned as one dot-atom, or one quoted string where a word needs
/// quoting, and whether white space was removed.
fn normalize_local(local: &str) -> Option<(String, bool)> {
    let words = split_outside_quotes(local, |c| c == '.');
    let mut spaced = false;
    let mut quoted = false;
    let mut content = Vec::with_capacity(words.len());
    for word in &words {
        let trimmed = word.trim();
        spaced |= trimmed.len() != word.len();
        if let Some(inner) = trimmed
            .strip_prefix('"')
            .and_then(|w| w.strip_suffix('"'))
            .filter(|_| trimmed.len() >= 2)
        {
            content.push(unescape(inner)?);
            quoted = true;
        } else if !trimmed.is_empty() && trimmed.chars().all(is_atext) {
            content.push(trimmed.to_string());
        } else {
            return None;
        }
    }
    let joined = content.join(".");
    if joined.is_empty() {
        return None;
    }
    let dot_atom = joined
        .split('.')
        .all(|w| !w.is_empty() && w.chars().all(is_atext));
    let local = if dot_atom {
        joined
    } else if quoted {
        format!("\"{}\"", joined.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        return None;
    };
    Some((local, spaced))
}

/// A domain as labels between dots, white space around them allowed (obs-domain), or a domain
/// literal; lower case, and whether white space was removed.
fn normalize_domain(domain: &str) -> Option<(String, bool)> {
    let trimmed = domain.trim();
    let mut spaced = trimmed.len() != domain.len();
    if let Some(literal) = trimmed.strip_prefix('[') {
        let inner = literal.strip_suffix(']')?;
        let compact: String = inner.chars().filter(|c| !c.is_whitespace()).collect();
        spaced |= compact.len() != inner.len();
        if compact.is_empty() || compact.contains(['[', ']', '\\']) {
            return None;
        }
        return Some((format!("[{}]", compact.to_lowercase()), spaced));
    }
    let mut labels = Vec::new();
    for label in trimmed.split('.') {
        let label_trimmed = label.trim();
        spaced |= label_trimmed.len() != label.len();
        if label_trimmed.is_empty() || !label_trimmed.chars().all(is_atext) {
            return None;
        }
        labels.push(label_trimmed.to_lowercase());
    }
    Some((labels.join("."), spaced))
}

/// RFC 5322 atext, with RFC 6532's UTF-8.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// The content of a quoted string with its quoted pairs undone; `None` for a bare `"`.
fn unescape(inner: &str) -> Option<String> {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// `text` without its comments (`(…)`, nested, with quoted pairs; not inside quoted strings),
/// each replaced by a space, and whether there was one.
pub(super) fn strip_comments(text: &str) -> (String, bool) {
    let mut out = String::with_capacity(text.len());
    let (mut depth, mut quoted, mut escaped, mut found) = (0usize, false, false, false);
    for c in text.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                out.push(c);
            }
            continue;
        }
        match c {
            '\\' if quoted || depth > 0 => {
                escaped = true;
                if depth == 0 {
                    out.push(c);
                }
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(c);
            }
            '(' if !quoted => {
                depth += 1;
                found = true;
            }
            ')' if !quoted && depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    out.push(' ');
                }
            }
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    (out, found)
}

/// Byte offsets of `wanted` in `text` outside quoted strings.
fn positions_outside_quotes(text: &str, wanted: impl Fn(char) -> bool) -> Vec<usize> {
    let (mut quoted, mut escaped) = (false, false);
    let mut found = Vec::new();
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' && quoted {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if !quoted && wanted(c) {
            found.push(i);
        }
    }
    found
}

fn position_outside_quotes(text: &str, wanted: char) -> Option<usize> {
    positions_outside_quotes(text, |c| c == wanted)
        .first()
        .copied()
}

fn last_position_outside_quotes(text: &str, wanted: char) -> Option<usize> {
    positions_outside_quotes(text, |c| c == wanted)
        .last()
        .copied()
}

fn contains_outside_quotes(text: &str, wanted: char) -> bool {
    position_outside_quotes(text, wanted).is_some()
}

/// `text` split at the characters `split` matches, outside quoted strings.
pub(super) fn split_outside_quotes(text: &str, split: impl Fn(char) -> bool) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    for i in positions_outside_quotes(text, &split) {
        parts.push(&text[start..i]);
        // Every splitting character used here is one byte long or white space: step over it.
        start = i + text[i..].chars().next().map_or(1, char::len_utf8);
    }
    parts.push(&text[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `header` (a whole field, `From: …`) through mail-parser and [`mailbox_list`].
    fn read(header: &str) -> Addresses {
        let raw = format!("{header}\r\nSubject: x\r\n\r\nbody\r\n");
        let message = mail_parser::MessageParser::default()
            .parse(raw.as_bytes())
            .unwrap();
        let (field, value) = header.split_once(':').unwrap();
        let parsed = match message.header(field) {
            Some(mail_parser::HeaderValue::Address(address)) => Some(address),
            _ => None,
        };
        mailbox_list(field, parsed, Some(value))
    }

    #[test]
    fn addresses_as_mail_really_carries_them() {
        /// The header, the `(name, address)` pairs it gives, the note's words ("" for none).
        type Case<'a> = (&'a str, &'a [(Option<&'a str>, &'a str)], &'a str);
        let cases: &[Case<'_>] = &[
            (
                "From: Alice <alice@Example.COM>",
                &[(Some("Alice"), "alice@example.com")],
                "",
            ),
            (
                "From: Big Bug bb@bug.com",
                &[(Some("Big Bug"), "bb@bug.com")],
                "no angle brackets",
            ),
            (
                "From: bb@bug.com Big Bug",
                &[(Some("Big Bug"), "bb@bug.com")],
                "no angle brackets",
            ),
            (
                "From: jdoe@machine.  example",
                &[(None, "jdoe@machine.example")],
                "obsolete syntax",
            ),
            (
                "From: John . Doe @ Example . com",
                &[(None, "John.Doe@example.com")],
                "obsolete",
            ),
            (
                "From: John Doe <jdoe@machine(comment).  example>",
                &[(Some("John Doe (comment)"), "jdoe@machine.example")],
                "obsolete",
            ),
            ("From: a@x, b@y", &[(None, "a@x"), (None, "b@y")], ""),
            (
                "From: Big Bug bb@bug.com, Other o@x.test",
                &[(Some("Big Bug"), "bb@bug.com"), (Some("Other"), "o@x.test")],
                "no angle brackets",
            ),
            (
                "From: bb@bug.com (Big Bug)",
                &[(Some("Big Bug"), "bb@bug.com")],
                "",
            ),
            (
                "From: Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>",
                &[(
                    Some("Pete (A nice ) chap his account his host)"),
                    "pete@silly.test",
                )],
                "",
            ),
            (
                "From: <@a.test,@b.test:x@Y.test>",
                &[(None, "x@y.test")],
                "source route",
            ),
            (
                "From: Joe <@a.test:x@y.test>",
                &[(Some("Joe"), "x@y.test")],
                "source route",
            ),
            ("From: undisclosed-recipients:;", &[], "empty group"),
            (
                "From: Team: a@x.test, B <b@Y.test>;",
                &[(None, "a@x.test"), (Some("B"), "b@y.test")],
                "",
            ),
            (
                "From: \"john doe\"@Example.com",
                &[(None, "\"john doe\"@example.com")],
                "",
            ),
            (
                "From: \"john\"@example.com",
                &[(None, "john@example.com")],
                "",
            ),
            (
                "From: \"Doe, John\" <\"j d\"@Example.COM>",
                &[(Some("Doe, John"), "\"j d\"@example.com")],
                "",
            ),
            (
                "From: X <\"john\".\"doe\"@example.com>",
                &[(Some("X"), "john.doe@example.com")],
                "",
            ),
            (
                "From: Jösé <jösé@Bücher.DE>",
                &[(Some("Jösé"), "jösé@bücher.de")],
                "",
            ),
            (
                "From: =?utf-8?q?J=C3=B6rg?= <J@EXAMPLE.com>",
                &[(Some("Jörg"), "J@example.com")],
                "",
            ),
            (
                "From: \"bb@bug.com\"",
                &[(None, "bb@bug.com")],
                "quoted name only",
            ),
            ("From: bb@", &[], "not an address"),
            ("From: bb at bug.com", &[], "holds no address"),
            ("From: a@x.test b@y.test", &[], "not an address"),
            ("From: <a@[192.0.2.1]>", &[(None, "a@[192.0.2.1]")], ""),
        ];
        for (header, expected, note) in cases {
            let got = read(header);
            let parties: Vec<(Option<&str>, &str)> = got
                .parties
                .iter()
                .map(|p| (p.name.as_deref(), p.address.as_str()))
                .collect();
            assert_eq!(&parties, expected, "{header}");
            if note.is_empty() {
                assert_eq!(got.notes, Vec::<String>::new(), "{header}");
            } else {
                assert!(
                    got.notes.iter().any(|n| n.contains(note)),
                    "{header}: {:?}",
                    got.notes
                );
            }
        }
    }

    #[test]
    fn a_bracketless_from_says_how_it_was_read() {
        assert_eq!(
            read("From: Big Bug bb@bug.com").notes,
            [
                "From `Big Bug bb@bug.com` has no angle brackets: read heuristically as the name \"Big Bug\" and the address bb@bug.com"
            ]
        );
        assert_eq!(
            read("From: jdoe@machine.  example").notes,
            [
                "From `jdoe@machine.  example` is in the obsolete syntax (RFC 5322 §4.4): read as jdoe@machine.example"
            ]
        );
    }

    #[test]
    fn return_paths() {
        let cases: &[(&str, &str, bool)] = &[
            ("<>", "", false),
            ("  <> ", "", false),
            ("<bounce+x@Customer.TEST>", "bounce+x@customer.test", false),
            ("bounce@customer.test", "bounce@customer.test", false),
            ("<@relay.test:x@y.test>", "x@y.test", true),
            ("<x@y.test> (via relay)", "x@y.test", true),
            ("<not an address>", "not an address", true),
        ];
        for (raw, expected, noted) in cases {
            let (path, note) = return_path(raw);
            assert_eq!(&path, expected, "{raw}");
            assert_eq!(note.is_some(), *noted, "{raw}: {note:?}");
        }
    }
}
