use serde_json::json;

use super::*;

fn config(metric: Metric, exact: bool) -> IndexConfig {
    IndexConfig {
        dim: 3,
        metric,
        embedder: None,
        exact,
        m: None,
        ef_construction: None,
        ef_search: None,
        max_k: Some(50),
        k: None,
        text_field: Some("text".into()),
    }
}

fn point(id: &str, v: [f32; 3], payload: serde_json::Value) -> Point {
    Point { id: id.into(), vector: v.to_vec(), payload: Some(payload) }
}

#[test]
fn exact_and_hnsw_agree_and_filters_apply() {
    for exact in [true, false] {
        for metric in [Metric::Cosine, Metric::Ip, Metric::L2] {
            let c = Collection::new("c", config(metric, exact), true).unwrap();
            c.upsert(
                vec![
                    point("a", [1.0, 0.0, 0.0], json!({"lang": "en", "n": 1})),
                    point("b", [0.9, 0.1, 0.0], json!({"lang": "de", "n": 2})),
                    point("c", [0.0, 1.0, 0.0], json!({"lang": "en", "n": 3})),
                ],
                1,
                true,
            )
            .unwrap();
            let q = c.prepare_vector("q", vec![1.0, 0.05, 0.0]).unwrap();
            let hits = c.search(&q, 2, None, None).unwrap();
            assert_eq!(hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["a", "b"], "{metric:?} exact={exact}");
            let en = Filter::parse(&json!({"lang": "en"})).unwrap();
            let hits = c.search(&q, 2, Some(&en), None).unwrap();
            assert_eq!(hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["a", "c"]);
            let some = Filter::parse(&json!({"n": {"in": [2, 3]}})).unwrap();
            assert_eq!(c.search(&q, 5, Some(&some), None).unwrap().len(), 2);
            // Replace and delete.
            c.upsert(vec![point("a", [0.0, 0.0, 1.0], json!({}))], 2, true).unwrap();
            // Re-reading an older or the same change leaves the point as it is.
            assert_eq!(c.upsert(vec![point("a", [1.0, 0.0, 0.0], json!({}))], 2, true).unwrap(), 0);
            assert_eq!(c.search(&q, 1, None, None).unwrap()[0].id, "b");
            assert_eq!(c.delete(&["b".into(), "zz".into()], 3, true).unwrap(), 1);
            assert_eq!(c.info().count, 2);
            assert_eq!(c.info().applied_seq, 3);
            assert!(!c.contains("b"));
        }
    }
}

#[test]
fn bad_points_and_queries_are_named_and_nothing_half_applies() {
    let c = Collection::new("c", config(Metric::Cosine, true), true).unwrap();
    let err = c
        .upsert(
            vec![point("ok", [1.0, 0.0, 0.0], json!({})), Point { id: "x".into(), vector: vec![1.0], payload: None }],
            1,
            true,
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "points[1] ('x'): vector has 1 values; collection 'c' has dim 3");
    assert_eq!(c.info().count, 0, "nothing of a refused batch is applied");
    let err =
        c.upsert(vec![Point { id: "n".into(), vector: vec![f32::NAN, 0.0, 0.0], payload: None }], 1, true).unwrap_err();
    assert!(err.to_string().contains("vector[0] is NaN"), "{err}");
    assert!(
        c.upsert(vec![point("", [1.0, 0.0, 0.0], json!({}))], 1, true).unwrap_err().to_string().contains("point id")
    );
    assert!(c.check_k(51).unwrap_err().to_string().contains("1 to 50 neighbours"));
    for (filter, message) in [
        (json!({"a": [1]}), "filter on 'a': an array is not a string, number or boolean"),
        (json!({"a": {"gt": 1}}), "unknown operator"),
        (json!({"a": {"in": 3}}), "\"in\" takes an array"),
        (json!([1]), "filter must be an object"),
    ] {
        let err = Filter::parse(&filter).unwrap_err().to_string();
        assert!(err.contains(message), "{err}");
    }
    let loading = Collection::new("l", config(Metric::L2, true), false).unwrap();
    assert!(matches!(loading.search(&[0.0; 3], 1, None, None), Err(CollectionError::Loading(_))));
}

#[test]
fn many_threads_search_one_hnsw_index_at_once() {
    let c = Collection::new("c", config(Metric::Cosine, false), true).unwrap();
    let points = (0..200).map(|i| point(&format!("p{i}"), [1.0, i as f32 / 100.0, 0.5], json!({}))).collect();
    c.upsert(points, 1, true).unwrap();
    let q = c.prepare_vector("q", vec![1.0, 0.5, 0.5]).unwrap();
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                for _ in 0..50 {
                    assert_eq!(c.search(&q, 5, None, None).unwrap().len(), 5);
                }
            });
        }
    });
}

#[test]
fn keyword_and_hybrid_search_fuse_ranks() {
    for exact in [true, false] {
        let c = Collection::new("c", config(Metric::Cosine, exact), true).unwrap();
        c.upsert(
            vec![
                point("lost", [1.0, 0.0, 0.0], json!({"text": "Lost or stolen card: freeze it", "lang": "en"})),
                point("fees", [0.0, 1.0, 0.0], json!({"text": "Card fees abroad", "lang": "en"})),
                point("pin", [0.9, 0.1, 0.0], json!({"text": "Forgot your PIN", "lang": "de"})),
                point("none", [0.0, 0.0, 1.0], json!({"lang": "en"})),
            ],
            0,
            false,
        )
        .unwrap();
        let ids = |hits: Vec<Hit>| hits.into_iter().map(|h| h.id).collect::<Vec<_>>();
        let q = c.prepare_vector("q", vec![1.0, 0.0, 0.0]).unwrap();
        let only_text = Weights { text: 1.0, vector: 0.0 };
        // Keywords alone: "stolen" is in one text; "card" in two (the shorter text first).
        assert_eq!(ids(c.search_hybrid(None, Some("stolen"), only_text, 3, None, None).unwrap()), ["lost"]);
        assert_eq!(ids(c.search_hybrid(None, Some("card"), only_text, 3, None, None).unwrap()), ["fees", "lost"]);
        // Fused: "lost" is first by vector and second by keywords; "pin" second by vector only.
        let hits = c.search_hybrid(Some(&q), Some("card"), Weights::default(), 3, None, None).unwrap();
        let want = [1.0 / 62.0 + 1.0 / 61.0, 1.0 / 61.0 + 1.0 / 63.0 - 1e-9, 1.0 / 62.0];
        assert_eq!(ids(hits.clone()), ["lost", "fees", "pin"]);
        assert!((hits[0].score - want[0] as f32).abs() < 1e-6, "{hits:?}");
        // A filter applies to both sides; a re-upsert re-indexes the text, a delete drops it.
        let en = Filter::parse(&json!({"lang": "de"})).unwrap();
        assert_eq!(
            ids(c.search_hybrid(Some(&q), Some("card"), Weights::default(), 3, Some(&en), None).unwrap()),
            ["pin"]
        );
        c.upsert(vec![point("fees", [0.0, 1.0, 0.0], json!({"text": "transfer times"}))], 0, false).unwrap();
        assert_eq!(ids(c.search_hybrid(None, Some("card"), only_text, 3, None, None).unwrap()), ["lost"]);
        c.delete(&["lost".to_string()], 0, false).unwrap();
        assert!(c.search_hybrid(None, Some("card"), only_text, 3, None, None).unwrap().is_empty());
        let bad = Weights { text: 0.0, vector: 0.0 };
        assert!(c.search_hybrid(Some(&q), Some("card"), bad, 3, None, None).is_err());
    }
}
