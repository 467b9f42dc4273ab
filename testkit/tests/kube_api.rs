//! The in-test Lease API server's REST semantics, over plain HTTP (no Kubernetes API server can be
//! installed here; `KubeApi` implements the Lease subset the kube client uses).

use preheat_testkit::kube_api::{ApiMode, KubeApi, Verb};
use serde_json::{json, Value};

fn lease(name: &str, rv: Option<&str>, holder: &str) -> Value {
    let mut l = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "labels": {"app": "x"}}, "spec": {"holderIdentity": holder}});
    if let Some(rv) = rv {
        l["metadata"]["resourceVersion"] = json!(rv);
    }
    l
}

/// Sends with an optional JSON body; returns the status and the JSON answer (Null if none).
async fn call(rb: reqwest::RequestBuilder, body: Option<&Value>) -> anyhow::Result<(u16, Value)> {
    let rb = match body {
        Some(b) => rb
            .header("content-type", "application/json")
            .body(serde_json::to_vec(b)?),
        None => rb,
    };
    let r = rb.send().await?;
    let code = r.status().as_u16();
    let bytes = r.bytes().await?;
    Ok((code, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

fn client() -> reqwest::Client {
    preheat_testkit::install_crypto_provider();
    reqwest::Client::new()
}

#[tokio::test]
async fn lease_rest_semantics() -> anyhow::Result<()> {
    let api = KubeApi::start().await?;
    let http = client();
    let base = format!(
        "{}/apis/coordination.k8s.io/v1/namespaces/ns/leases",
        api.url()
    );
    let one = format!("{base}/a");
    let (code, body) = call(http.get(&one), None).await?;
    assert_eq!(code, 404);
    assert_eq!(
        (
            body["kind"].as_str(),
            body["reason"].as_str(),
            body["code"].as_u64()
        ),
        (Some("Status"), Some("NotFound"), Some(404))
    );
    let (code, created) = call(http.post(&base), Some(&lease("a", None, "n1"))).await?;
    assert_eq!(code, 201);
    let rv1 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(!rv1.is_empty());
    let (code, body) = call(http.post(&base), Some(&lease("a", None, "n2"))).await?;
    assert_eq!(
        (code, body["reason"].as_str()),
        (409, Some("AlreadyExists"))
    );
    // Replace with the current resourceVersion moves it on; the old one then conflicts.
    let (code, body) = call(http.put(&one), Some(&lease("a", Some(&rv1), "n2"))).await?;
    assert_eq!(code, 200);
    let rv2 = body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_ne!(rv1, rv2);
    assert_eq!(body["metadata"]["uid"], created["metadata"]["uid"]);
    let (code, body) = call(http.put(&one), Some(&lease("a", Some(&rv1), "n3"))).await?;
    assert_eq!((code, body["reason"].as_str()), (409, Some("Conflict")));
    assert_eq!(
        api.lease("ns", "a")
            .map(|l| l["spec"]["holderIdentity"].clone()),
        Some(json!("n2"))
    );
    let (_, body) = call(http.get(format!("{base}?labelSelector=app%3Dx")), None).await?;
    assert_eq!(body["items"].as_array().map(Vec::len), Some(1));
    let (_, body) = call(http.get(format!("{base}?labelSelector=app%3Dy")), None).await?;
    assert_eq!(body["items"].as_array().map(Vec::len), Some(0));
    // Delete honours the resourceVersion precondition.
    let (code, _) = call(
        http.delete(&one),
        Some(&json!({"preconditions": {"resourceVersion": rv1}})),
    )
    .await?;
    assert_eq!(code, 409);
    let (code, body) = call(
        http.delete(&one),
        Some(&json!({"preconditions": {"resourceVersion": rv2}})),
    )
    .await?;
    assert_eq!((code, body["status"].as_str()), (200, Some("Success")));
    assert_eq!(call(http.delete(&one), None).await?.0, 404);
    assert_eq!(
        call(http.put(&one), Some(&lease("a", None, "n1"))).await?.0,
        404
    );
    assert!(api.lease_names("ns").is_empty());
    assert_eq!(
        (api.calls(Verb::Create, 201), api.calls(Verb::Create, 409)),
        (1, 1)
    );
    assert_eq!(
        (
            api.calls(Verb::Replace, 200),
            api.calls(Verb::Replace, 409),
            api.calls(Verb::Replace, 404)
        ),
        (1, 1, 1)
    );
    assert_eq!(
        (
            api.calls(Verb::Delete, 409),
            api.calls(Verb::Delete, 200),
            api.calls(Verb::Delete, 404)
        ),
        (1, 1, 1)
    );
    assert_eq!(api.total_calls(), 11);
    Ok(())
}

#[tokio::test]
async fn rejects_wrong_kind_namespace_and_create_with_resource_version() -> anyhow::Result<()> {
    let api = KubeApi::start().await?;
    let http = client();
    let base = format!(
        "{}/apis/coordination.k8s.io/v1/namespaces/ns/leases",
        api.url()
    );
    let mut wrong = lease("a", None, "n");
    wrong["metadata"]["namespace"] = json!("other");
    assert_eq!(call(http.post(&base), Some(&wrong)).await?.0, 400);
    assert_eq!(
        call(http.post(&base), Some(&lease("a", Some("5"), "n")))
            .await?
            .0,
        400
    );
    let mut pod = lease("a", None, "n");
    pod["kind"] = json!("Pod");
    assert_eq!(call(http.post(&base), Some(&pod)).await?.0, 400);
    assert!(api.lease_names("ns").is_empty());
    Ok(())
}

#[tokio::test]
async fn unavailable_and_refusing() -> anyhow::Result<()> {
    let api = KubeApi::start().await?;
    let http = client();
    let url = format!(
        "{}/apis/coordination.k8s.io/v1/namespaces/ns/leases/a",
        api.url()
    );
    assert_eq!(call(http.get(&url), None).await?.0, 404);
    api.set_mode(ApiMode::Unavailable);
    let (code, body) = call(http.get(&url), None).await?;
    assert_eq!((code, body["kind"].as_str()), (503, Some("Status")));
    api.set_mode(ApiMode::Refuse);
    // Both the kept-alive connection and a fresh one fail without an answer.
    assert!(call(http.get(&url), None).await.is_err());
    assert!(call(client().get(&url), None).await.is_err());
    api.set_mode(ApiMode::Up);
    assert_eq!(call(http.get(&url), None).await?.0, 404);
    assert_eq!(
        (api.calls(Verb::Get, 404), api.calls(Verb::Get, 503)),
        (2, 1)
    );
    Ok(())
}
