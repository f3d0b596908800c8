//! Helpers shared by the store's files: placeholder lists for statements with many values (the
//! values themselves are bound), and the encodings of stored columns (gzip for raw mail, JSON
//! address lists, the `<id> <id>` form of References).

use crate::ingest::Party;

/// `($1, …, $width), ($width+1, …), …` for `rows` rows of `width` values bound in order.
pub(super) fn value_lists(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|row| format!("({})", placeholders(row * width + 1, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `$first, $first+1, …` for `n` values bound in order.
pub(super) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|k| format!("${k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn gzip(raw: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(raw);
    encoder.finish().unwrap_or_default()
}

pub(super) fn parties_json(parties: &[Party]) -> String {
    serde_json::to_string(parties).unwrap_or_else(|_| "[]".into())
}

pub(super) fn join_ids(ids: &[String]) -> Option<String> {
    if ids.is_empty() {
        None
    } else {
        Some(
            ids.iter()
                .map(|id| format!("<{id}>"))
                .collect::<Vec<_>>()
                .join(" "),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_lists_number_the_placeholders_row_by_row() {
        assert_eq!(placeholders(3, 2), "$3, $4");
        assert_eq!(value_lists(2, 3), "($1, $2, $3), ($4, $5, $6)");
    }
}
