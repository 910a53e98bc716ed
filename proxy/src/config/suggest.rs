//! "Did you mean" suggestions: the closest known name to a misspelt one, if it is close enough.

/// The candidate closest to `word`, compared case-insensitively, if its distance is at most
/// `max(1, len / 3)`. Ties go to the earliest candidate, so callers control the order.
///
/// The distance is by chars, and counts insertions, deletions, substitutions and swaps of two
/// adjacent chars as 1 each (optimal string alignment, [`strsim::osa_distance`]), because
/// swapped letters (`mpas` for `maps`) are the commonest typo.
pub fn closest<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let word_lower = word.to_lowercase();
    let limit = (word.chars().count() / 3).max(1);
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        if candidate == word {
            // Suggesting the very name the user wrote helps nobody.
            continue;
        }
        let distance = strsim::osa_distance(&word_lower, &candidate.to_lowercase());
        let better = match best {
            Some((d, _)) => distance < d,
            None => true,
        };
        if distance <= limit && better {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// ` (did you mean "x"?)` for a quoted value, or an empty string when nothing is close.
pub fn did_you_mean_quoted<'a, I>(word: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    closest(word, candidates)
        .map(|c| format!(" (did you mean {c:?}?)"))
        .unwrap_or_default()
}

/// `` (did you mean `x`?)`` for a key or keyword, or an empty string when nothing is close.
pub fn did_you_mean_key<'a, I>(word: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    closest(word, candidates)
        .map(|c| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use strsim::osa_distance as edit_distance;

    #[test]
    fn distance_counts_single_edits() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("tegloa", "tegola"), 1);
        assert_eq!(edit_distance("mpas", "maps"), 1);
        assert_eq!(edit_distance("ca", "abc"), 3);
        assert_eq!(edit_distance("htp", "http"), 1);
        assert_eq!(edit_distance("héllo", "hello"), 1);
    }

    #[test]
    fn suggests_only_close_candidates() {
        let names = ["maps", "tegola", "kartotherian-metal"];
        assert_eq!(closest("mpas", names), Some("maps"));
        assert_eq!(closest("tegloa", names), Some("tegola"));
        assert_eq!(
            closest("kartotherian-metl", names),
            Some("kartotherian-metal")
        );
        assert_eq!(closest("osm", names), None);
        assert_eq!(closest("x", ["y"]), Some("y"));
        assert_eq!(closest("abc", ["xyz"]), None);
    }

    #[test]
    fn ignores_case_but_not_identity() {
        assert_eq!(closest("Tegola", ["tegola"]), Some("tegola"));
        assert_eq!(closest("tegola", ["tegola"]), None);
    }

    #[test]
    fn prefers_the_nearest_then_the_first() {
        assert_eq!(closest("http3", ["http1", "http2"]), Some("http1"));
        assert_eq!(closest("listn", ["list", "listen"]), Some("list"));
        assert_eq!(closest("listeen", ["list", "listen"]), Some("listen"));
    }

    #[test]
    fn formats_hints() {
        assert_eq!(
            did_you_mean_key("htp", ["name", "http"]),
            " (did you mean `http`?)"
        );
        assert_eq!(
            did_you_mean_quoted("mpas", ["maps"]),
            " (did you mean \"maps\"?)"
        );
        assert_eq!(did_you_mean_quoted("zzz", ["maps"]), "");
    }
}
