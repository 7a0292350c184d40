//! The movie-review sentences `scripts/fetch-assets` writes (needs the assets).

use adarank::data::{assets, glue};
use adarank::testkit;
use std::collections::HashSet;

#[test]
fn movie_review_splits_match_the_source_counts() {
    if !testkit::require_assets("movie_review_splits_match_the_source_counts") {
        return;
    }
    let dir = assets::movie_reviews_dir();
    let split = |n: &str| glue::load_sst2(&dir.join(format!("{n}.tsv"))).unwrap();
    let (train, dev, test) = (split("train"), split("dev"), split("test"));
    // Hutto & Gilbert's movieReviewSnippets: 10,605 sentences, 5,242 rated positive, 5,326
    // negative, 37 zero (dropped); split 80/10/10.
    assert_eq!((train.len(), dev.len(), test.len()), (8454, 1056, 1058));
    let pos = |v: &[glue::Example]| v.iter().filter(|e| e.label == 1).count();
    assert_eq!(pos(&train) + pos(&dev) + pos(&test), 5242);
    // Every sentence lands in exactly one split (the source repeats 2 sentences verbatim).
    let all: Vec<&str> = [&train, &dev, &test]
        .iter()
        .flat_map(|v| v.iter().map(|e| e.text_a.as_str()))
        .collect();
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), all.len() - 2);
}
