//! HTTP tests: fake-entra issues the tokens, the fake Graph runs on 127.0.0.1:0, and the tests
//! talk HTTP to it as a Graph client would. Where Microsoft's pages give a request/response
//! example, the test replays it (shape, status, paging) against this fake.

use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use fake_entra::{AccessTokenSpec, Client, FakeEntra, SigningKey};
use serde_json::{Value, json};

use crate::{
    ConcurrencyScope, Config, DeliverOptions, FakeGraph, GRAPH_RESOURCE, GraphError, Limits,
    STORE_SIZE_OVERHEAD, ThrottleFault, User, ValueFault,
};

pub(crate) const APP: &str = "6a1e6f0b-3c2d-4e5f-8a9b-0c1d2e3f4a5b";
const APP_SECRET: &str = "graph-app-secret";
const SUPPORT: &str = "support@helpdesk.test";
const SALES: &str = "sales@helpdesk.test";
const IMMUTABLE: &str = "IdType=\"ImmutableId\"";

pub(crate) fn key() -> SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().expect("generate key"))
        .clone()
}

pub(crate) struct World {
    pub entra: FakeEntra,
    pub graph: FakeGraph,
    pub http: reqwest::Client,
    pub token: String,
}

async fn start() -> World {
    start_with(Config::default()).await
}

pub(crate) async fn start_with(config: Config) -> World {
    let users = if config.users.is_empty() {
        vec![
            User::new(SUPPORT),
            User::new(SALES),
            User {
                mailbox_enabled: false,
                ..User::new("nolicence@helpdesk.test")
            },
        ]
    } else {
        config.users.clone()
    };
    let mut entra_config = fake_entra::Config::example().with_client(
        Client::confidential(APP, "graph-app", APP_SECRET)
            .with_app_roles(&["Mail.ReadWrite", "Mail.Send"]),
    );
    entra_config.resource = GRAPH_RESOURCE.to_owned();
    let entra = FakeEntra::start(entra_config, key(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let config = Config { users, ..config };
    let graph = FakeGraph::start(config, key(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let token = entra.issue_access_token(AccessTokenSpec::app(APP)).unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    World {
        entra,
        graph,
        http,
        token,
    }
}

pub(crate) struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl World {
    pub(crate) fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.graph.graph_url())
        }
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        prefer: &[&str],
        body: Option<Value>,
    ) -> Answer {
        let mut request = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        for p in prefer {
            request = request.header("Prefer", *p);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        answer(request.send().await.unwrap()).await
    }

    pub(crate) async fn get(&self, path: &str, prefer: &[&str]) -> Answer {
        self.call(reqwest::Method::GET, path, prefer, None).await
    }

    pub(crate) async fn post(&self, path: &str, prefer: &[&str], body: Value) -> Answer {
        self.call(reqwest::Method::POST, path, prefer, Some(body))
            .await
    }

    fn deliver(&self, user: &str, subject: &str) -> crate::MessageIds {
        self.graph
            .deliver(user, "inbox", mime(subject), DeliverOptions::default())
            .unwrap()
    }
}

pub(crate) async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn mime(subject: &str) -> Vec<u8> {
    format!(
        "From: Dana Swope <danas@contoso.com>\r\nTo: {SUPPORT}\r\nSubject: {subject}\r\nMessage-ID: <{}@contoso.com>\r\nDate: Mon, 4 Sep 2017 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBody of {subject}.\r\n",
        subject.replace(' ', ".")
    )
    .into_bytes()
}

pub(crate) fn delta_url(user: &str, folder: &str, query: &str) -> String {
    format!("/users/{user}/mailFolders/{folder}/messages/delta{query}")
}

/// Follows a delta round to its deltaLink; returns the pages' values and the deltaLink.
pub(crate) async fn delta_round(
    world: &World,
    first: &str,
    prefer: &[&str],
) -> (Vec<Vec<Value>>, String) {
    let mut pages = Vec::new();
    let mut url = first.to_owned();
    loop {
        let a = world.get(&url, prefer).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        pages.push(a.body["value"].as_array().unwrap().clone());
        if let Some(next) = a.body["@odata.nextLink"].as_str() {
            assert!(next.contains("$skiptoken="), "{next}");
            assert!(a.body.get("@odata.deltaLink").is_none());
            url = next.to_owned();
        } else {
            let delta = a.body["@odata.deltaLink"]
                .as_str()
                .expect("deltaLink")
                .to_owned();
            assert!(delta.contains("$deltatoken="), "{delta}");
            return (pages, delta);
        }
        assert!(pages.len() < 100, "delta round does not end");
    }
}

#[tokio::test]
async fn errors_have_graphs_shape_and_auth_is_checked() {
    let w = start().await;
    // No token: 401 with the error JSON, innerError carrying date and both request ids.
    let a = answer(
        w.http
            .get(w.url(&format!("/users/{SUPPORT}/mailFolders")))
            .header("client-request-id", "8f1c2d3e-0000-4000-8000-000000000001")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.code(), "InvalidAuthenticationToken");
    let inner = &a.body["error"]["innerError"];
    assert_eq!(
        inner["client-request-id"],
        "8f1c2d3e-0000-4000-8000-000000000001"
    );
    assert_eq!(inner["request-id"].as_str(), a.header("request-id"));
    assert_eq!(
        inner["date"].as_str().unwrap().len(),
        "2018-05-05T09:12:35".len()
    );
    assert!(a.body["error"]["message"].is_string());

    // Expired, wrong audience (an IMAP token), missing role.
    let expired = w
        .entra
        .issue_access_token(AccessTokenSpec::app(APP).expired())
        .unwrap();
    let imap = w
        .entra
        .issue_access_token(
            AccessTokenSpec::app(APP).with_audience("https://outlook.office365.com"),
        )
        .unwrap();
    let no_role = w
        .entra
        .issue_access_token(AccessTokenSpec::app(APP).with_permissions(&["User.Read.All"]))
        .unwrap();
    let send_only = w
        .entra
        .issue_access_token(AccessTokenSpec::app(APP).with_permissions(&["Mail.Send"]))
        .unwrap();
    let other_key = SigningKey::generate().unwrap();
    let forged = {
        let entra2 = FakeEntra::start(
            fake_entra::Config::example(),
            other_key,
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        entra2
            .issue_access_token(AccessTokenSpec::app(APP).with_audience(GRAPH_RESOURCE))
            .unwrap()
    };
    for (token, status, code, message) in [
        (
            &expired,
            401,
            "InvalidAuthenticationToken",
            "Lifetime validation failed, the token is expired.",
        ),
        (
            &imap,
            401,
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid audience.",
        ),
        (
            &forged,
            401,
            "InvalidAuthenticationToken",
            "Access token validation failure.",
        ),
        (
            &no_role,
            403,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        ),
        (
            &send_only,
            403,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        ),
    ] {
        let a = answer(
            w.http
                .get(w.url(&format!("/users/{SUPPORT}/mailFolders")))
                .bearer_auth(token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((a.status, a.code()), (status, code), "{:?}", a.body);
        assert_eq!(a.body["error"]["message"], message);
    }

    // A token from fake-entra's token endpoint (client credentials for Graph) works.
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", APP),
        ("client_secret", APP_SECRET),
        ("scope", "https://graph.microsoft.com/.default"),
    ];
    let issued: Value = w
        .http
        .post(w.entra.token_url())
        .form(&form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = issued["access_token"].as_str().expect("token");
    let a = answer(
        w.http
            .get(w.url(&format!("/users/{SUPPORT}/mailFolders/inbox")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["displayName"], "Inbox");

    // Unknown user, user without a mailbox, app scoped away from the mailbox.
    let a = w.get("/users/nobody@helpdesk.test/mailFolders", &[]).await;
    assert_eq!((a.status, a.code()), (404, "ErrorInvalidUser"));
    assert_eq!(
        a.body["error"]["message"],
        "The requested user 'nobody@helpdesk.test' is invalid."
    );
    let a = w
        .get("/users/nolicence@helpdesk.test/mailFolders", &[])
        .await;
    assert_eq!((a.status, a.code()), (404, "MailboxNotEnabledForRESTAPI"));
    w.graph.restrict_app(APP, &[SALES]);
    let a = w.get(&format!("/users/{SUPPORT}/mailFolders"), &[]).await;
    assert_eq!((a.status, a.code()), (403, "ErrorAccessDenied"));
    assert_eq!(
        w.get(&format!("/users/{SALES}/mailFolders"), &[])
            .await
            .status,
        200
    );
    // By object id as well as by UPN.
    let id = w.graph.user_id(SALES).unwrap();
    assert_eq!(
        w.get(&format!("/users/{id}/mailFolders/inbox"), &[])
            .await
            .status,
        200
    );
    // A message id that does not exist, and one that is not an id.
    let a = w
        .get(
            &format!("/users/{SALES}/messages/AAMkAGnotthereatallnotthere="),
            &[],
        )
        .await;
    assert_eq!((a.status, a.code()), (404, "ErrorItemNotFound"));
    let a = w.get(&format!("/users/{SALES}/messages/x"), &[]).await;
    assert_eq!((a.status, a.code()), (400, "ErrorInvalidIdMalformed"));
}

#[tokio::test]
async fn mail_folders_list_get_create_and_filter() {
    let w = start().await;
    let a = w
        .get(&format!("/users/{SUPPORT}/mailFolders?$top=50"), &[])
        .await;
    assert_eq!(a.status, 200);
    let names: Vec<&str> = a.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["displayName"].as_str().unwrap())
        .collect();
    for expected in [
        "Inbox",
        "Sent Items",
        "Deleted Items",
        "Junk Email",
        "Archive",
        "Drafts",
        "Outbox",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }
    let folder = &a.body["value"][0];
    for field in [
        "id",
        "displayName",
        "parentFolderId",
        "childFolderCount",
        "unreadItemCount",
        "totalItemCount",
        "isHidden",
    ] {
        assert!(folder.get(field).is_some(), "{field} missing in {folder}");
    }
    // Default page size 10 with more folders than that: an @odata.nextLink.
    for i in 0..6 {
        assert_eq!(
            w.post(
                &format!("/users/{SUPPORT}/mailFolders"),
                &[],
                json!({"displayName": format!("Queue {i}")})
            )
            .await
            .status,
            201
        );
    }
    let a = w.get(&format!("/users/{SUPPORT}/mailFolders"), &[]).await;
    assert_eq!(a.body["value"].as_array().unwrap().len(), 10);
    let next = a.body["@odata.nextLink"]
        .as_str()
        .expect("nextLink")
        .to_owned();
    let b = w.get(&next, &[]).await;
    assert_eq!(b.body["value"].as_array().unwrap().len(), 3);
    assert!(b.body.get("@odata.nextLink").is_none());

    let created = w
        .post(
            &format!("/users/{SUPPORT}/mailFolders"),
            &[],
            json!({"displayName": "Quarantine"}),
        )
        .await;
    assert_eq!(created.status, 201);
    assert_eq!(created.body["displayName"], "Quarantine");
    let id = created.body["id"].as_str().unwrap().to_owned();
    let again = w
        .post(
            &format!("/users/{SUPPORT}/mailFolders"),
            &[],
            json!({"displayName": "quarantine"}),
        )
        .await;
    assert_eq!((again.status, again.code()), (409, "ErrorFolderExists"));
    let found = w
        .get(
            &format!("/users/{SUPPORT}/mailFolders?$filter=displayName eq 'Quarantine'"),
            &[],
        )
        .await;
    assert_eq!(found.body["value"].as_array().unwrap().len(), 1);
    assert_eq!(found.body["value"][0]["id"], id.as_str());
    let none = w
        .get(
            &format!("/users/{SUPPORT}/mailFolders?$filter=displayName eq 'Nope'"),
            &[],
        )
        .await;
    assert_eq!(none.body["value"].as_array().unwrap().len(), 0);
    // Well-known names are case-insensitive; ids are stable.
    let inbox = w
        .get(&format!("/users/{SUPPORT}/mailFolders/Inbox"), &[])
        .await;
    let inbox2 = w
        .get(&format!("/users/{SUPPORT}/mailfolders('inbox')"), &[])
        .await;
    assert_eq!(inbox.body["id"], inbox2.body["id"]);
    let child = w
        .post(
            &format!("/users/{SUPPORT}/mailFolders/{id}/childFolders"),
            &[],
            json!({"displayName": "Held"}),
        )
        .await;
    assert_eq!(child.status, 201);
    assert_eq!(child.body["parentFolderId"], id.as_str());
    let children = w
        .get(
            &format!("/users/{SUPPORT}/mailFolders/{id}/childFolders"),
            &[],
        )
        .await;
    assert_eq!(children.body["value"][0]["displayName"], "Held");
    assert_eq!(
        w.get(&format!("/users/{SUPPORT}/mailFolders/{id}"), &[])
            .await
            .body["childFolderCount"],
        1
    );
}

/// Replays Microsoft's "Example 1: synchronize messages in a folder"
/// (https://learn.microsoft.com/graph/delta-query-messages): 5 messages, 2 per page, 3
/// requests to the deltaLink; then one message deleted and another marked read, and the next
/// round returns just those two changes.
#[tokio::test]
async fn delta_rounds_page_with_skiptoken_and_return_only_changes() {
    let w = start().await;
    let mut ids = Vec::new();
    for s in [
        "Holiday hours update",
        "Holiday promotion sale",
        "Microsoft Virtual Academy at Contoso",
        "New or modified user account information",
        "Fabric CDN now available",
    ] {
        ids.push(w.deliver(SUPPORT, s));
    }
    let first = delta_url(SUPPORT, "inbox", "?$select=subject,sender,isRead");
    let a = w.get(&first, &["odata.maxpagesize=2"]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("preference-applied"), Some("odata.maxpagesize=2"));
    assert!(
        a.body["@odata.context"]
            .as_str()
            .unwrap()
            .ends_with("$metadata#Collection(message)")
    );
    let page = a.body["value"].as_array().unwrap();
    assert_eq!(page.len(), 2);
    let m = &page[0];
    assert_eq!(m["@odata.type"], "#microsoft.graph.message");
    assert!(m["@odata.etag"].as_str().unwrap().starts_with("W/\""));
    assert!(m["id"].is_string());
    assert_eq!(m["sender"]["emailAddress"]["address"], "danas@contoso.com");
    assert_eq!(m["isRead"], false);
    // $select returns only the selected properties (and id).
    assert!(m.get("receivedDateTime").is_none() && m.get("body").is_none());

    let (pages, delta_link) = delta_round(
        &w,
        a.body["@odata.nextLink"].as_str().unwrap(),
        &["odata.maxpagesize=2"],
    )
    .await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![2, 1], "pages after the first");
    // The $select travels in the tokens.
    assert!(pages[1][0].get("body").is_none());

    // Next round: one deleted, one marked read.
    let deleted = &ids[4].rest_id;
    let read = &ids[0].rest_id;
    assert_eq!(
        w.call(
            reqwest::Method::DELETE,
            &format!("/users/{SUPPORT}/messages/{deleted}"),
            &[],
            None
        )
        .await
        .status,
        204
    );
    let patched = w
        .call(
            reqwest::Method::PATCH,
            &format!("/users/{SUPPORT}/messages/{read}"),
            &[],
            Some(json!({"isRead": true})),
        )
        .await;
    assert_eq!(patched.status, 200);
    assert_eq!(patched.body["isRead"], true);
    let (pages, delta_link2) = delta_round(&w, &delta_link, &["odata.maxpagesize=2"]).await;
    let values: Vec<&Value> = pages.iter().flatten().collect();
    assert_eq!(values.len(), 2, "{values:?}");
    let removed = values
        .iter()
        .find(|v| v.get("@removed").is_some())
        .expect("@removed");
    assert_eq!(removed["id"], deleted.as_str());
    assert_eq!(removed["@removed"]["reason"], "deleted");
    let updated = values.iter().find(|v| v.get("@removed").is_none()).unwrap();
    assert_eq!(updated["id"], read.as_str());
    assert_eq!(updated["isRead"], true);
    assert_eq!(updated["subject"], "Holiday hours update");

    // Nothing changed: an empty page with a deltaLink.
    let (pages, _) = delta_round(&w, &delta_link2, &[]).await;
    assert_eq!(pages, vec![Vec::<Value>::new()]);
    // A new message shows up in the next round from the older deltaLink too (links replay).
    w.deliver(SUPPORT, "Late arrival");
    let (pages, _) = delta_round(&w, &delta_link2, &[]).await;
    assert_eq!(pages.concat().len(), 1);
}

#[tokio::test]
async fn delta_default_page_size_change_type_and_received_filter() {
    let w = start().await;
    let old = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let new = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    for i in 0..12 {
        let when = if i < 4 { old } else { new };
        w.graph
            .deliver(
                SUPPORT,
                "inbox",
                mime(&format!("m{i}")),
                DeliverOptions {
                    received: Some(when),
                    ..DeliverOptions::default()
                },
            )
            .unwrap();
    }
    // Without a preference, pages of 10.
    let a = w.get(&delta_url(SUPPORT, "inbox", ""), &[]).await;
    assert_eq!(a.body["value"].as_array().unwrap().len(), 10);
    assert!(a.header("preference-applied").is_none());
    // receivedDateTime ge: only the 8 newer ones.
    let filter = "?$filter=receivedDateTime+ge+2026-01-01T00:00:00Z";
    let (pages, delta_link) = delta_round(&w, &delta_url(SUPPORT, "inbox", filter), &[]).await;
    let all: Vec<Value> = pages.concat();
    assert_eq!(all.len(), 8);
    assert!(
        all.iter()
            .all(|m| m["receivedDateTime"].as_str().unwrap() >= "2026-01-01")
    );
    // Unsupported filters are refused.
    let a = w
        .get(
            &delta_url(SUPPORT, "inbox", "?$filter=subject eq 'm1'"),
            &[],
        )
        .await;
    assert_eq!((a.status, a.code()), (400, "ErrorInvalidUrlQueryFilter"));
    // changeType=created: after the initial round, only new messages, not updates.
    let (_, created_link) =
        delta_round(&w, &delta_url(SUPPORT, "inbox", "?changeType=created"), &[]).await;
    let some = w.graph.messages(SUPPORT, "inbox").unwrap()[5]
        .ids
        .rest_id
        .clone();
    w.call(
        reqwest::Method::PATCH,
        &format!("/users/{SUPPORT}/messages/{some}"),
        &[],
        Some(json!({"isRead": true})),
    )
    .await;
    w.deliver(SUPPORT, "brand new");
    let (pages, _) = delta_round(&w, &created_link, &[]).await;
    let subjects: Vec<&str> = pages
        .iter()
        .flatten()
        .map(|m| m["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, vec!["brand new"]);
    // The filter's round continues with the filter: the old-dated update is not reported.
    let old_one = w.graph.messages(SUPPORT, "inbox").unwrap()[0]
        .ids
        .rest_id
        .clone();
    w.call(
        reqwest::Method::PATCH,
        &format!("/users/{SUPPORT}/messages/{old_one}"),
        &[],
        Some(json!({"isRead": true})),
    )
    .await;
    let (pages, _) = delta_round(&w, &delta_link, &[]).await;
    let subjects: Vec<&str> = pages
        .iter()
        .flatten()
        .map(|m| m["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, vec!["m5", "brand new"]);
}

#[tokio::test]
async fn message_size_is_the_store_size_in_extended_property_0e08() {
    let w = start().await;
    let ids = w.deliver(SUPPORT, "sized");
    let mime_len = mime("sized").len() as u64;
    let expand = "$expand=singleValueExtendedProperties($filter=id eq 'Long 0x0E08')";
    let a = w
        .get(
            &delta_url(SUPPORT, "inbox", &format!("?$select=subject&{expand}")),
            &[],
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let props = &a.body["value"][0]["singleValueExtendedProperties"];
    assert_eq!(
        props,
        &json!([{"id": "Long 0xe08", "value": (mime_len + STORE_SIZE_OVERHEAD).to_string()}])
    );
    // Controllable, and on GET message too.
    w.graph.set_store_size(SUPPORT, &ids.rest_id, 99).unwrap();
    let a = w
        .get(
            &format!(
                "/users/{SUPPORT}/messages/{}?$select=subject&{expand}",
                ids.rest_id
            ),
            &[],
        )
        .await;
    assert_eq!(a.body["singleValueExtendedProperties"][0]["value"], "99");
    assert_eq!(a.body["subject"], "sized");
    // Without the expand, no property collection.
    let a = w
        .get(&format!("/users/{SUPPORT}/messages/{}", ids.rest_id), &[])
        .await;
    assert!(a.body.get("singleValueExtendedProperties").is_none());
    for field in [
        "receivedDateTime",
        "internetMessageId",
        "from",
        "toRecipients",
        "body",
        "parentFolderId",
        "isRead",
    ] {
        assert!(a.body.get(field).is_some(), "{field}");
    }
    assert_eq!(a.body["internetMessageId"], "<sized@contoso.com>");
    // An unknown $select property is a 400.
    let a = w
        .get(
            &format!("/users/{SUPPORT}/messages/{}?$select=nonsense", ids.rest_id),
            &[],
        )
        .await;
    assert_eq!(a.status, 400);
}

#[tokio::test]
async fn expired_delta_tokens_answer_410_sync_state_not_found() {
    let w = start().await;
    for i in 0..3 {
        w.deliver(SUPPORT, &format!("m{i}"));
    }
    let a = w
        .get(&delta_url(SUPPORT, "inbox", ""), &["odata.maxpagesize=2"])
        .await;
    let next = a.body["@odata.nextLink"].as_str().unwrap().to_owned();
    let (_, delta_link) = delta_round(&w, &next, &[]).await;
    assert!(w.graph.expire_delta_tokens(SUPPORT, Some("inbox")).unwrap() >= 2);
    for link in [&next, &delta_link] {
        let a = w.get(link, &[]).await;
        assert_eq!(
            (a.status, a.code()),
            (410, "SyncStateNotFound"),
            "{:?}",
            a.body
        );
        assert!(
            a.body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("The sync state generation is not found")
        );
    }
    // A fresh initial round works and returns everything again.
    let (pages, _) = delta_round(&w, &delta_url(SUPPORT, "inbox", ""), &[]).await;
    assert_eq!(pages.concat().len(), 3);
    // A made-up token is also a 410.
    let a = w
        .get(&delta_url(SUPPORT, "inbox", "?$deltatoken=nonsense"), &[])
        .await;
    assert_eq!(a.status, 410);
}

#[tokio::test]
async fn ids_are_immutable_across_move_with_the_prefer_header_and_change_without() {
    let w = start().await;
    let ids = w.deliver(SUPPORT, "mover");
    let quarantine = w.graph.create_folder(SUPPORT, "Quarantine").unwrap();
    // Without the header: the REST id, which changes on move; the old id is gone.
    let moved = w
        .post(
            &format!("/users/{SUPPORT}/messages/{}/move", ids.rest_id),
            &[],
            json!({"destinationId": quarantine}),
        )
        .await;
    assert_eq!(moved.status, 201, "{:?}", moved.body);
    let new_rest = moved.body["id"].as_str().unwrap().to_owned();
    assert_ne!(new_rest, ids.rest_id);
    assert_eq!(moved.body["parentFolderId"], quarantine.as_str());
    let a = w
        .get(&format!("/users/{SUPPORT}/messages/{}", ids.rest_id), &[])
        .await;
    assert_eq!((a.status, a.code()), (404, "ErrorItemNotFound"));
    // With the header: the immutable id, the same before and after a move.
    let a = w
        .get(
            &format!("/users/{SUPPORT}/messages/{new_rest}"),
            &[IMMUTABLE],
        )
        .await;
    assert_eq!(a.body["id"], ids.immutable_id.as_str());
    assert_eq!(a.header("preference-applied"), Some(IMMUTABLE));
    let moved = w
        .post(
            &format!("/users/{SUPPORT}/messages/{}/move", ids.immutable_id),
            &[IMMUTABLE],
            json!({"destinationId": "archive"}),
        )
        .await;
    assert_eq!(moved.status, 201);
    assert_eq!(moved.body["id"], ids.immutable_id.as_str());
    assert_eq!(w.graph.messages(SUPPORT, "archive").unwrap().len(), 1);
    // Delta of the source folder reports the move as a removal, with the id form asked for.
    let (_, link) = delta_round(&w, &delta_url(SUPPORT, "archive", ""), &[IMMUTABLE]).await;
    w.post(
        &format!("/users/{SUPPORT}/messages/{}/move", ids.immutable_id),
        &[],
        json!({"destinationId": "inbox"}),
    )
    .await;
    let (pages, _) = delta_round(&w, &link, &[IMMUTABLE]).await;
    assert_eq!(
        pages.concat(),
        vec![
            json!({"@odata.type": "#microsoft.graph.message", "id": ids.immutable_id, "@removed": {"reason": "deleted"}})
        ]
    );
}

#[tokio::test]
async fn value_is_the_mime_patch_delete_and_permanent_delete() {
    let w = start().await;
    let ids = w.deliver(SUPPORT, "raw");
    let response = w
        .http
        .get(w.url(&format!("/users/{SUPPORT}/messages/{}/$value", ids.rest_id)))
        .bearer_auth(&w.token)
        .header("Range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    // Range is not honoured (the documents do not offer it): the whole MIME, 200.
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.bytes().await.unwrap().to_vec(), mime("raw"));
    // DELETE moves to Deleted Items; from there, to the hidden recoverable items.
    assert_eq!(
        w.call(
            reqwest::Method::DELETE,
            &format!("/users/{SUPPORT}/messages/{}", ids.immutable_id),
            &[],
            None
        )
        .await
        .status,
        204
    );
    assert_eq!(w.graph.messages(SUPPORT, "deleteditems").unwrap().len(), 1);
    assert_eq!(w.graph.messages(SUPPORT, "inbox").unwrap().len(), 0);
    // permanentDelete: gone.
    let a = w
        .post(
            &format!(
                "/users/{SUPPORT}/messages/{}/permanentDelete",
                ids.immutable_id
            ),
            &[],
            json!(null),
        )
        .await;
    assert_eq!(a.status, 204);
    assert_eq!(w.graph.messages(SUPPORT, "deleteditems").unwrap().len(), 0);
    let a = w
        .get(
            &format!("/users/{SUPPORT}/messages/{}", ids.immutable_id),
            &[],
        )
        .await;
    assert_eq!(a.status, 404);
    // PATCH of content of received mail is refused; unknown properties too.
    let other = w.deliver(SUPPORT, "other");
    let a = w
        .call(
            reqwest::Method::PATCH,
            &format!("/users/{SUPPORT}/messages/{}", other.rest_id),
            &[],
            Some(json!({"subject": "x"})),
        )
        .await;
    assert_eq!(a.status, 400);
    let a = w
        .call(
            reqwest::Method::PATCH,
            &format!("/users/{SUPPORT}/messages/{}", other.rest_id),
            &[],
            Some(json!({"isRead": true, "categories": ["Red"]})),
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["categories"], json!(["Red"]));
}

#[tokio::test]
async fn value_faults_fail_stall_and_abort() {
    let w = start().await;
    let ids = w.deliver(SUPPORT, "big");
    let path = format!("/users/{SUPPORT}/messages/{}/$value", ids.rest_id);
    w.graph
        .set_value_fault(
            SUPPORT,
            &ids.rest_id,
            Some(ValueFault::Fail {
                error: GraphError::new(504, "UnknownError", ""),
                after: Duration::from_millis(200),
            }),
        )
        .unwrap();
    let started = std::time::Instant::now();
    let a = w.get(&path, &[]).await;
    assert_eq!((a.status, a.code()), (504, "UnknownError"));
    assert!(started.elapsed() >= Duration::from_millis(200));
    // Abort after 10 bytes: the body breaks.
    w.graph
        .set_value_fault(
            SUPPORT,
            &ids.rest_id,
            Some(ValueFault::Abort { after_bytes: 10 }),
        )
        .unwrap();
    let response = w
        .http
        .get(w.url(&path))
        .bearer_auth(&w.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.bytes().await.is_err());
    // Stall: a client timeout fires; release lets the rest through.
    w.graph
        .set_value_fault(
            SUPPORT,
            &ids.rest_id,
            Some(ValueFault::Stall { after_bytes: 5 }),
        )
        .unwrap();
    let mut response = w
        .http
        .get(w.url(&path))
        .bearer_auth(&w.token)
        .send()
        .await
        .unwrap();
    let head = response.chunk().await.unwrap().unwrap();
    assert_eq!(head.as_ref(), &mime("big")[..5]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), response.chunk())
            .await
            .is_err()
    );
    w.graph.release_stalls();
    let mut rest = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, mime("big")[5..].to_vec());
}

#[tokio::test]
async fn injected_429_and_503_carry_retry_after() {
    let w = start().await;
    w.graph.inject(
        ThrottleFault::TooManyRequests {
            retry_after: Duration::from_secs(7),
        },
        1,
        Some(SUPPORT),
    );
    w.graph.inject(
        ThrottleFault::ServiceUnavailable {
            retry_after: Duration::from_secs(3),
        },
        1,
        None,
    );
    let path = format!("/users/{SUPPORT}/mailFolders/inbox");
    // The 429 only for SUPPORT: SALES gets the 503 first.
    let a = w
        .get(&format!("/users/{SALES}/mailFolders/inbox"), &[])
        .await;
    assert_eq!((a.status, a.header("retry-after")), (503, Some("3")));
    let a = w.get(&path, &[]).await;
    assert_eq!(
        (a.status, a.code(), a.header("retry-after")),
        (429, "ApplicationThrottled", Some("7"))
    );
    assert_eq!(w.get(&path, &[]).await.status, 200);
    assert_eq!(w.graph.request_count(SUPPORT), 2);
    assert_eq!(w.graph.request_count(SALES), 1);
}

#[tokio::test]
async fn a_fifth_concurrent_request_gets_429_mailbox_concurrency() {
    let w = start().await;
    let ids = w.deliver(SUPPORT, "slow");
    w.graph
        .set_value_fault(
            SUPPORT,
            &ids.rest_id,
            Some(ValueFault::Stall { after_bytes: 1 }),
        )
        .unwrap();
    let path = format!("/users/{SUPPORT}/messages/{}/$value", ids.rest_id);
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut response = w
            .http
            .get(w.url(&path))
            .bearer_auth(&w.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        response.chunk().await.unwrap();
        held.push(response);
    }
    let a = w
        .get(&format!("/users/{SUPPORT}/mailFolders/inbox"), &[])
        .await;
    assert_eq!((a.status, a.code()), (429, "ApplicationThrottled"));
    assert_eq!(
        a.body["error"]["message"],
        "Application is over its MailboxConcurrency limit."
    );
    assert!(a.header("retry-after").is_some());
    // The page's current text: per app, whatever the mailbox.
    let a = w
        .get(&format!("/users/{SALES}/mailFolders/inbox"), &[])
        .await;
    assert_eq!(a.status, 429);
    assert_eq!(w.graph.peak_concurrency(APP, ""), 4);
    // Finishing the downloads frees the slots.
    w.graph.release_stalls();
    for mut response in held {
        while response.chunk().await.unwrap().is_some() {}
    }
    let mut ok = false;
    for _ in 0..50 {
        if w.get(&format!("/users/{SUPPORT}/mailFolders/inbox"), &[])
            .await
            .status
            == 200
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "slots were not released");
}

#[tokio::test]
async fn concurrency_per_mailbox_when_configured_so() {
    let w = start_with(Config {
        limits: Limits {
            concurrency_scope: ConcurrencyScope::AppAndMailbox,
            ..Limits::default()
        },
        ..Config::default()
    })
    .await;
    let ids = w.deliver(SUPPORT, "slow");
    w.graph
        .set_value_fault(
            SUPPORT,
            &ids.rest_id,
            Some(ValueFault::Stall { after_bytes: 1 }),
        )
        .unwrap();
    let path = format!("/users/{SUPPORT}/messages/{}/$value", ids.rest_id);
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut response = w
            .http
            .get(w.url(&path))
            .bearer_auth(&w.token)
            .send()
            .await
            .unwrap();
        response.chunk().await.unwrap();
        held.push(response);
    }
    assert_eq!(
        w.get(&format!("/users/{SUPPORT}/mailFolders/inbox"), &[])
            .await
            .status,
        429
    );
    assert_eq!(
        w.get(&format!("/users/{SALES}/mailFolders/inbox"), &[])
            .await
            .status,
        200
    );
    w.graph.release_stalls();
    drop(held);
}

#[tokio::test]
async fn request_and_upload_limits_per_app_and_mailbox() {
    let w = start_with(Config {
        limits: Limits {
            requests_per_window: 3,
            request_window: Duration::from_secs(60),
            upload_bytes_per_window: 2000,
            ..Limits::default()
        },
        ..Config::default()
    })
    .await;
    let path = format!("/users/{SUPPORT}/mailFolders/inbox");
    for _ in 0..3 {
        assert_eq!(w.get(&path, &[]).await.status, 200);
    }
    let a = w.get(&path, &[]).await;
    assert_eq!((a.status, a.code()), (429, "ApplicationThrottled"));
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((50..=60).contains(&retry), "{retry}");
    // Another mailbox is not affected.
    assert_eq!(
        w.get(&format!("/users/{SALES}/mailFolders/inbox"), &[])
            .await
            .status,
        200
    );
    // Upload: 2000 bytes per window to SALES; a larger sendMail body is throttled.
    let big = base64::engine::general_purpose::STANDARD.encode(vec![b'a'; 1000]);
    let send = |body: String| {
        w.http
            .post(w.url(&format!("/users/{SALES}/sendMail")))
            .bearer_auth(&w.token)
            .header("Content-Type", "text/plain")
            .body(body)
            .send()
    };
    let first = answer(send(big.clone()).await.unwrap()).await;
    assert_ne!(first.status, 429, "{:?}", first.body);
    let second = answer(send(big).await.unwrap()).await;
    assert_eq!(
        (second.status, second.code()),
        (429, "ApplicationThrottled")
    );
    assert_eq!(
        second.body["error"]["message"],
        "Application is over its IncomingBytes limit."
    );
}

#[tokio::test]
async fn send_mail_mime_delivers_to_users_and_saves_to_sent_items() {
    let w = start().await;
    let mime = format!(
        "From: {SALES}\r\nTo: {SUPPORT}\r\nBcc: hidden@elsewhere.test\r\nSubject: Re: ticket 42\r\nAuto-Submitted: auto-replied\r\nX-Custom: dropped\r\nX-Priority: 1\r\nX-MS-Exchange-Test: kept\r\nMessage-ID: <ack-42@helpdesk.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nThanks.\r\n"
    );
    let body = base64::engine::general_purpose::STANDARD.encode(mime.as_bytes());
    let response = w
        .http
        .post(w.url(&format!("/users/{SALES}/sendMail")))
        .bearer_auth(&w.token)
        .header("Content-Type", "text/plain")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let inbox = w.graph.messages(SUPPORT, "inbox").unwrap();
    assert_eq!(inbox.len(), 1);
    let delivered = String::from_utf8(inbox[0].mime.clone()).unwrap();
    assert!(
        !delivered.to_ascii_lowercase().contains("auto-submitted"),
        "{delivered}"
    );
    assert!(!delivered.contains("hidden@elsewhere.test"), "{delivered}");
    assert!(delivered.contains("Message-ID: <ack-42@helpdesk.test>"));
    // Unknown X- headers go; those Exchange maps to properties, and its own, stay.
    assert!(!delivered.contains("X-Custom"), "{delivered}");
    assert!(delivered.contains("X-Priority: 1"), "{delivered}");
    assert!(
        delivered.contains("X-MS-Exchange-Test: kept"),
        "{delivered}"
    );
    assert!(delivered.ends_with("\r\n\r\nThanks.\r\n"), "{delivered:?}");
    let sent = w.graph.messages(SALES, "sentitems").unwrap();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].is_read);
    let a = w
        .get(
            &format!(
                "/users/{SALES}/messages/{}?$select=internetMessageId,bccRecipients",
                sent[0].ids.rest_id
            ),
            &[],
        )
        .await;
    assert_eq!(a.body["internetMessageId"], "<ack-42@helpdesk.test>");
    assert_eq!(
        a.body["bccRecipients"][0]["emailAddress"]["address"],
        "hidden@elsewhere.test"
    );

    // Bad base64, another sender's From, no recipients.
    let post = |body: String| {
        w.http
            .post(w.url(&format!("/users/{SALES}/sendMail")))
            .bearer_auth(&w.token)
            .header("Content-Type", "text/plain")
            .body(body)
            .send()
    };
    let a = answer(post("not base64 at all!".to_owned()).await.unwrap()).await;
    assert_eq!(
        (a.status, a.code()),
        (400, "ErrorMimeContentInvalidBase64String")
    );
    let spoof = base64::engine::general_purpose::STANDARD.encode(format!(
        "From: ceo@helpdesk.test\r\nTo: {SUPPORT}\r\nSubject: x\r\n\r\nx\r\n"
    ));
    let a = answer(post(spoof).await.unwrap()).await;
    assert_eq!((a.status, a.code()), (403, "ErrorSendAsDenied"));
    // Without a Message-ID Exchange assigns one, the same in Sent Items and the inbox.
    let plain = base64::engine::general_purpose::STANDARD
        .encode(format!("To: {SUPPORT}\r\nSubject: no id\r\n\r\nx\r\n"));
    assert_eq!(answer(post(plain).await.unwrap()).await.status, 202);
    let inbox = w.graph.messages(SUPPORT, "inbox").unwrap();
    let sent = w.graph.messages(SALES, "sentitems").unwrap();
    let id_of = |m: &crate::MessageSnapshot| crate::store::Parsed::of(&m.mime).internet_message_id;
    assert!(id_of(&inbox[1]).is_some());
    assert_eq!(id_of(&inbox[1]), id_of(&sent[1]));
    // A token with only Mail.ReadWrite cannot send.
    let read_write = w
        .entra
        .issue_access_token(AccessTokenSpec::app(APP).with_permissions(&["Mail.ReadWrite"]))
        .unwrap();
    let a = answer(
        w.http
            .post(w.url(&format!("/users/{SALES}/sendMail")))
            .bearer_auth(read_write)
            .header("Content-Type", "text/plain")
            .body("eA==")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((a.status, a.code()), (403, "ErrorAccessDenied"));
}

#[tokio::test]
async fn control_api_over_http() {
    let w = start().await;
    let base = w.graph.base_url();
    let delivered: Value = w
        .http
        .post(format!(
            "{base}/_fake/users/{SUPPORT}/mailFolders/inbox/messages?storeSize=123456"
        ))
        .body(mime("via control"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = delivered["immutableId"].as_str().unwrap().to_owned();
    assert_eq!(
        w.graph.messages(SUPPORT, "inbox").unwrap()[0].store_size,
        123_456
    );
    let r = w
        .http
        .patch(format!("{base}/_fake/users/{SUPPORT}/messages/{id}"))
        .json(&json!({"storeSize": 7, "valueFault": {"kind": "fail", "status": 504, "code": "UnknownError"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        w.get(&format!("/users/{SUPPORT}/messages/{id}/$value"), &[])
            .await
            .status,
        504
    );
    let (_, link) = delta_round(&w, &delta_url(SUPPORT, "inbox", ""), &[]).await;
    let expired: Value = w
        .http
        .post(format!("{base}/_fake/users/{SUPPORT}/expireDeltaTokens"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(expired["expired"].as_u64().unwrap() >= 1);
    assert_eq!(w.get(&link, &[]).await.status, 410);
    let r = w
        .http
        .post(format!("{base}/_fake/throttle"))
        .json(&json!({"status": 429, "retryAfterSecs": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        w.get(&format!("/users/{SUPPORT}/mailFolders"), &[])
            .await
            .header("retry-after"),
        Some("2")
    );
    let counted: Value = w
        .http
        .get(format!("{base}/_fake/requests?mailbox={SUPPORT}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counted["count"], 4);
}

#[tokio::test]
async fn message_lists_filter_by_internet_message_id_and_refuse_other_filters() {
    let w = start().await;
    w.deliver(SUPPORT, "first");
    w.deliver(SUPPORT, "second");
    let found = w
        .get(
            &format!(
                "/users/{SUPPORT}/mailFolders/inbox/messages?$select=internetMessageId&$filter=internetMessageId eq '<second@contoso.com>'"
            ),
            &[],
        )
        .await;
    assert_eq!(found.status, 200, "{:?}", found.body);
    let values = found.body["value"].as_array().unwrap();
    assert_eq!(values.len(), 1);
    assert_eq!(values[0]["internetMessageId"], "<second@contoso.com>");
    let other = w
        .get(
            &format!("/users/{SUPPORT}/messages?$filter=subject eq 'first'"),
            &[],
        )
        .await;
    assert_eq!(other.status, 400);
}

/// https://learn.microsoft.com/graph/api/message-post-attachments (a `fileAttachment` with
/// `contentBytes`: 201 with the attachment) on a MIME draft, and the documented limits around
/// it: an upload session for a file under 3 MB is refused with
/// `ErrorAttachmentSizeShouldNotBeLessThanMinimumSize` (the large-attachments page's Errors), a
/// request body above 4 MB with "The maximum request length supported is 4MB."; the sent draft
/// carries the attachment.
#[tokio::test]
async fn small_attachments_are_posted_and_the_request_limits_hold() {
    let w = start().await;
    let mime = format!(
        "From: {SALES}\r\nTo: {SUPPORT}\r\nSubject: with a file\r\nMessage-ID: <file-1@helpdesk.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nAttached.\r\n"
    );
    let draft = answer(
        w.http
            .post(w.url(&format!("/users/{SALES}/messages")))
            .bearer_auth(&w.token)
            .header("Content-Type", "text/plain")
            .body(base64::engine::general_purpose::STANDARD.encode(mime.as_bytes()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(draft.status, 201, "{:?}", draft.body);
    let id = draft.body["id"].as_str().unwrap().to_owned();
    let content = b"GIF87a small smile".to_vec();
    let added = w
        .post(
            &format!("/users/{SALES}/messages/{id}/attachments"),
            &[],
            json!({
                "@odata.type": "#microsoft.graph.fileAttachment",
                "name": "smile",
                "contentType": "image/gif",
                "contentBytes": base64::engine::general_purpose::STANDARD.encode(&content),
            }),
        )
        .await;
    assert_eq!(added.status, 201, "{:?}", added.body);
    assert_eq!(added.body["@odata.type"], "#microsoft.graph.fileAttachment");
    assert_eq!(added.body["name"], "smile");
    assert_eq!(added.body["size"], content.len());
    assert!(added.body["id"].is_string());

    let small = w
        .post(
            &format!("/users/{SALES}/messages/{id}/attachments/createUploadSession"),
            &[],
            json!({"AttachmentItem": {"attachmentType": "file", "name": "small", "size": 1_000_000}}),
        )
        .await;
    assert_eq!(
        (small.status, small.code()),
        (400, "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize")
    );
    let huge = answer(
        w.http
            .post(w.url(&format!("/users/{SALES}/sendMail")))
            .bearer_auth(&w.token)
            .header("Content-Type", "text/plain")
            .body("QUFB".repeat(1024 * 1024 + 1))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((huge.status, huge.code()), (400, "BadRequest"));
    assert!(
        huge.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum request length"),
        "{:?}",
        huge.body
    );

    let sent = w
        .post(
            &format!("/users/{SALES}/messages/{id}/send"),
            &[],
            json!({}),
        )
        .await;
    assert_eq!(sent.status, 202, "{:?}", sent.body);
    let inbox = w.graph.messages(SUPPORT, "inbox").unwrap();
    assert_eq!(inbox.len(), 1);
    let parsed = mail_parser::MessageParser::default()
        .parse(&inbox[0].mime)
        .unwrap();
    assert_eq!(parsed.message_id(), Some("file-1@helpdesk.test"));
    let attachment = mail_parser::MimeHeaders::attachment_name(
        parsed.attachments().next().expect("the attachment"),
    )
    .map(str::to_owned);
    assert_eq!(attachment.as_deref(), Some("smile"));
    let attachment = parsed.attachments().next().unwrap();
    assert_eq!(attachment.contents(), content.as_slice());
}

/// A draft made from MIME and sent: the Sent Items copy is the same item, found by the draft's
/// immutable id (https://learn.microsoft.com/graph/outlook-immutable-id, "Immutable ID with
/// sending mail"), no longer a draft; nothing is left in Drafts. With
/// [`crate::OwnMessageIds`] the fake gives the message a Message-ID of its own, at draft
/// creation or at the send, as a client must be ready for.
#[tokio::test]
async fn a_sent_draft_keeps_its_immutable_id_and_shows_the_message_id_it_went_with() {
    for own in [
        crate::OwnMessageIds::Never,
        crate::OwnMessageIds::AtDraftCreation,
        crate::OwnMessageIds::AtSend,
    ] {
        let w = start_with(Config {
            own_message_ids: own,
            ..Config::default()
        })
        .await;
        let ours = format!("<draft-{own:?}@helpdesk.test>");
        let mime = format!(
            "From: {SALES}\r\nTo: {SUPPORT}\r\nSubject: ticket 7\r\nMessage-ID:\r\n {ours}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nHello.\r\n"
        );
        let draft = answer(
            w.http
                .post(w.url(&format!("/users/{SALES}/messages")))
                .bearer_auth(&w.token)
                .header("Content-Type", "text/plain")
                .header("Prefer", IMMUTABLE)
                .body(base64::engine::general_purpose::STANDARD.encode(mime.as_bytes()))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(draft.status, 201, "{:?}", draft.body);
        let id = draft.body["id"].as_str().unwrap().to_owned();
        let at_creation = draft.body["internetMessageId"].as_str().unwrap().to_owned();
        assert_eq!(draft.body["isDraft"], true);
        assert_eq!(
            at_creation == ours,
            own != crate::OwnMessageIds::AtDraftCreation,
            "{own:?}: {at_creation}"
        );
        let sent = w
            .call(
                reqwest::Method::POST,
                &format!("/users/{SALES}/messages/{id}/send"),
                &[],
                None,
            )
            .await;
        assert_eq!(sent.status, 202, "{:?}", sent.body);
        let copy = w
            .get(
                &format!(
                    "/users/{SALES}/messages/{id}?$select=internetMessageId,isDraft,parentFolderId"
                ),
                &[IMMUTABLE],
            )
            .await;
        assert_eq!(copy.status, 200, "{own:?}: {:?}", copy.body);
        assert_eq!(copy.body["isDraft"], false);
        let sent_items = w
            .get(
                &format!("/users/{SALES}/mailFolders/sentitems?$select=id"),
                &[],
            )
            .await;
        assert_eq!(copy.body["parentFolderId"], sent_items.body["id"]);
        let went_with = copy.body["internetMessageId"].as_str().unwrap().to_owned();
        assert_eq!(
            went_with == ours,
            own == crate::OwnMessageIds::Never,
            "{own:?}: {went_with}"
        );
        if own == crate::OwnMessageIds::AtDraftCreation {
            assert_eq!(went_with, at_creation);
        }
        // The recipient got it under the same Message-ID, once; Drafts is empty.
        let inbox = w.graph.messages(SUPPORT, "inbox").unwrap();
        assert_eq!(inbox.len(), 1);
        let delivered = String::from_utf8(inbox[0].mime.clone()).unwrap();
        assert!(delivered.contains(&went_with), "{own:?}: {delivered}");
        assert_eq!(delivered.matches("Message-ID").count(), 1, "{delivered}");
        assert!(w.graph.messages(SALES, "drafts").unwrap().is_empty());
        assert_eq!(w.graph.messages(SALES, "sentitems").unwrap().len(), 1);
    }
}
