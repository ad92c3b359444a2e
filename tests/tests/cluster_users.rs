//! The Auth0 user table on JetStream KV (`broker::cluster::users`), as two cluster nodes hold
//! it: two stores on one bucket of a real nats-server. The guarantees the single-node table's
//! unit tests check on sled hold across the two: one user per `sub` however the logins race,
//! a username given out once, a deletion that bans on both until a restore; and the table
//! operations keep their meaning on keys JetStream has deleted before.

use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use auth_plugin::table::Table;
use auth_plugin::users::{Profile, UserError, UserPatch, UserStore};
use broker::cluster::users::KvTable;
use tests::nats::NatsCluster;

async fn bucket(nats: &NatsCluster) -> kv::Store {
    let client = async_nats::connect(nats.url(0)).await.unwrap();
    jetstream::new(client)
        .create_key_value(kv::Config {
            bucket: "T_USERS".into(),
            history: 1,
            ..Default::default()
        })
        .await
        .unwrap()
}

fn store(bucket: &kv::Store) -> Arc<UserStore> {
    let opened = UserStore::on(&|name| Ok(Arc::new(KvTable::new(bucket.clone(), name))));
    Arc::new(opened.unwrap())
}

fn profile(nickname: &str) -> Profile {
    Profile {
        nickname: Some(nickname.into()),
        ..Profile::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_keep_one_user_per_sub_and_one_owner_per_username() {
    let nats = NatsCluster::start(1).await;
    let bucket = bucket(&nats).await;
    let nodes = [store(&bucket), store(&bucket)];
    let logins: Vec<_> = (0..8)
        .map(|i| {
            let node = nodes[i % 2].clone();
            tokio::spawn(async move { node.login("auth0|race", &profile("racer"), 1).await })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for login in logins {
        ids.insert(login.await.unwrap().unwrap().id);
    }
    assert_eq!(ids.len(), 1, "one user for one sub");

    let sams: Vec<_> = (0..4)
        .map(|i| {
            let node = nodes[i % 2].clone();
            tokio::spawn(async move { node.login(&format!("s|{i}"), &profile("sam"), 2).await })
        })
        .collect();
    let mut names = Vec::new();
    for login in sams {
        names.push(login.await.unwrap().unwrap().username);
    }
    names.sort();
    assert_eq!(names, ["sam", "sam2", "sam3", "sam4"]);

    let racer = nodes[0].by_sub("auth0|race").await.unwrap().unwrap();
    let rename = UserPatch {
        username: Some("sam".into()),
        ..UserPatch::default()
    };
    assert_eq!(
        nodes[1].update(&racer.id, &rename, true).await,
        Err(UserError::UsernameTaken("sam".into()))
    );
    let listed = nodes[1].list(None, None, 10).await.unwrap();
    assert_eq!(listed.len(), 5);
    let page = nodes[0]
        .list(Some("SAM"), Some(&listed[1].id), 2)
        .await
        .unwrap();
    assert_eq!(page.len(), 2);
    assert!(page
        .iter()
        .all(|u| u.id > listed[1].id && u.username.starts_with("sam")));
}

#[tokio::test]
async fn a_deletion_on_one_node_bans_on_the_other_until_restored() {
    let nats = NatsCluster::start(1).await;
    let bucket = bucket(&nats).await;
    let (one, two) = (store(&bucket), store(&bucket));
    let ghost = one.login("auth0|gone", &profile("ghost"), 1).await.unwrap();
    assert!(two.delete(&ghost.id).await.unwrap());
    assert!(one.is_deleted(&ghost.id).await.unwrap());
    assert_eq!(
        one.login("auth0|gone", &profile("ghost"), 2).await,
        Err(UserError::Banned)
    );
    let taker = one.login("auth0|new", &profile("ghost"), 3).await.unwrap();
    assert_eq!(taker.username, "ghost", "a deleted user's name is free");
    let back = one.restore(&ghost.id).await.unwrap();
    assert_eq!(
        (back.id.as_str(), back.username.as_str()),
        (ghost.id.as_str(), "ghost2")
    );
    let again = two.login("auth0|gone", &profile("ghost"), 4).await.unwrap();
    assert_eq!(again.id, ghost.id);
}

#[tokio::test]
async fn table_operations_mean_the_same_on_deleted_keys() {
    let nats = NatsCluster::start(1).await;
    let table = KvTable::new(bucket(&nats).await, "t");
    assert!(table
        .swap("auth0|k", None, Some(b"a".to_vec()))
        .await
        .unwrap());
    assert!(!table
        .swap("auth0|k", None, Some(b"b".to_vec()))
        .await
        .unwrap());
    assert!(!table.swap("auth0|k", Some(b"x"), None).await.unwrap());
    assert!(table.swap("auth0|k", Some(b"a"), None).await.unwrap());
    assert_eq!(table.get("auth0|k").await.unwrap(), None);
    assert!(table.swap("auth0|k", None, None).await.unwrap());
    assert!(
        table
            .swap("auth0|k", None, Some(b"c".to_vec()))
            .await
            .unwrap(),
        "created again"
    );
    table.remove("auth0|k").await.unwrap();
    table.remove("auth0|k").await.unwrap();
    table.insert("b", b"2".to_vec()).await.unwrap();
    table.insert("a", b"1".to_vec()).await.unwrap();
    table.insert("c", b"3".to_vec()).await.unwrap();
    let mut seen = Vec::new();
    let mut visit = |key: &str, value: &[u8]| {
        seen.push((key.to_owned(), value.to_vec()));
        seen.len() < 2
    };
    table.scan(Some("a"), &mut visit).await.unwrap();
    assert_eq!(
        seen,
        [("b".into(), b"2".to_vec()), ("c".into(), b"3".to_vec())]
    );
}
