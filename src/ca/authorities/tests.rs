use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;

use tempfile::TempDir;
use time::macros::datetime;
use x509_parser::prelude::FromDer as _;
use x509_parser::revocation_list::CertificateRevocationList;

use super::*;
use crate::identity::SpiffeId;
use crate::pki::authority::{Authority, AuthorityConfig};
use crate::pki::key::{KeyAlgorithm, PrivateKey};
use crate::pki::template::LeafRequest;
use crate::time::TestClock;

const START: OffsetDateTime = datetime!(2026-12-01 0:00 UTC);

struct Fixture {
    _dir: TempDir,
    path: std::path::PathBuf,
    clock: Arc<TestClock>,
    authorities: Arc<Authorities>,
}

fn rotation(ttl_secs: i64) -> RotationConfig {
    RotationConfig {
        authority_ttl: Duration::seconds(ttl_secs),
        ..RotationConfig::default()
    }
}

async fn open_at(
    path: &std::path::Path,
    clock: Arc<TestClock>,
    cfg: RotationConfig,
) -> Result<Arc<Authorities>, RotationError> {
    let shared: SharedClock = clock.clone();
    let first_clock = shared.clone();
    let ttl = cfg.authority_ttl;
    Authorities::open(
        Arc::new(FileStore::new(path.to_owned())),
        cfg,
        AuthorityConfig::default(),
        shared,
        Box::new(move || {
            Authority::create_rotation_root(
                "first",
                &AuthorityConfig::default(),
                ttl,
                first_clock.as_ref(),
            )
            .map(|a| (a, AuthoritySource::SelfSigned))
            .map_err(|e| RotationError::Authority {
                id: "first".into(),
                source: Box::new(e),
            })
        }),
    )
    .await
}

async fn fixture(ttl_secs: i64) -> Fixture {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("authorities.json");
    let clock = Arc::new(TestClock::new(START));
    let authorities = open_at(&path, clock.clone(), rotation(ttl_secs))
        .await
        .unwrap();
    Fixture {
        _dir: dir,
        path,
        clock,
        authorities,
    }
}

fn leaf_from(authority: &Authority, clock: &TestClock) -> Vec<u8> {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let id = SpiffeId::parse("spiffe://cluster.local/ns/a/sa/x").unwrap();
    authority
        .sign_leaf(
            &key.public_key_der(),
            &LeafRequest::workload(id, Duration::minutes(5)),
            clock,
        )
        .unwrap()
        .der
}

fn verifies_with_bundle(leaf: &[u8], snapshot: &Snapshot) -> bool {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).unwrap();
    snapshot.roots_der().iter().any(|root| {
        let (_, root) = x509_parser::certificate::X509Certificate::from_der(root).unwrap();
        cert.verify_signature(Some(root.public_key())).is_ok()
    })
}

fn states(snapshot: &Snapshot) -> Vec<(AuthorityState, bool)> {
    snapshot
        .entries()
        .iter()
        .map(|e| (e.state, e.tainted))
        .collect()
}

#[tokio::test]
async fn first_start_stores_one_active_authority_in_a_private_file() {
    let f = fixture(3600).await;
    let snapshot = f.authorities.current();
    assert_eq!(states(&snapshot), vec![(AuthorityState::Active, false)]);
    assert_eq!(snapshot.roots_der().len(), 1);
    let mode = std::fs::metadata(&f.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the state holds private keys");
    // A restart loads the same authority.
    let again = open_at(&f.path, f.clock.clone(), rotation(3600))
        .await
        .unwrap();
    assert_eq!(again.current().active().id(), snapshot.active().id());
}

#[tokio::test]
async fn prepare_then_activate_switches_signing_and_keeps_the_old_root_trusted() {
    let f = fixture(3600).await;
    let first = f.authorities.current().active().clone();
    let old_leaf = leaf_from(&first, &f.clock);

    f.authorities.prepare().await.unwrap();
    let prepared = f.authorities.current();
    assert_eq!(
        prepared.roots_der().len(),
        2,
        "the prepared root is trusted at once"
    );
    assert_eq!(prepared.active().id(), first.id(), "but does not sign yet");

    f.authorities.activate(None).await.unwrap();
    let activated = f.authorities.current();
    assert_ne!(activated.active().id(), first.id());
    assert_eq!(
        states(&activated),
        vec![
            (AuthorityState::Active, false),
            (AuthorityState::Old, false)
        ]
    );
    let new_leaf = leaf_from(activated.active(), &f.clock);
    assert!(verifies_with_bundle(&new_leaf, &activated));
    assert!(
        verifies_with_bundle(&old_leaf, &activated),
        "the old authority stays trusted"
    );
    // The new leaf does not verify with the old root alone.
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&new_leaf).unwrap();
    let old_roots = first.roots_der();
    let (_, old_root) = x509_parser::certificate::X509Certificate::from_der(&old_roots[0]).unwrap();
    assert!(cert.verify_signature(Some(old_root.public_key())).is_err());
}

#[tokio::test]
async fn activate_with_nothing_prepared_is_refused_and_names_the_fix() {
    let f = fixture(3600).await;
    let err = f.authorities.activate(None).await.unwrap_err().to_string();
    assert!(err.contains("no prepared authority"), "{err}");
    assert!(err.contains("meshid ca authority prepare"), "{err}");
    let active = f.authorities.current().active().id().to_owned();
    let err = f
        .authorities
        .activate(Some(&active))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is active, not prepared"), "{err}");
}

#[tokio::test]
async fn the_active_or_prepared_authority_cannot_be_tainted() {
    let f = fixture(3600).await;
    let active = f.authorities.current().active().id().to_owned();
    let err = f
        .authorities
        .taint(Some(&active))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is active: only an old authority can be tainted"),
        "{err}"
    );
    f.authorities.prepare().await.unwrap();
    let prepared = f.authorities.current().prepared().unwrap().id.clone();
    let err = f
        .authorities
        .taint(Some(&prepared))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is prepared"), "{err}");
    let err = f.authorities.taint(None).await.unwrap_err().to_string();
    assert!(err.contains("no untainted old authority"), "{err}");
    let err = f
        .authorities
        .taint(Some("abcd"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no authority abcd"), "{err}");
}

#[tokio::test]
async fn only_a_tainted_old_authority_can_be_revoked_and_then_leaves_the_bundle() {
    let f = fixture(3600).await;
    let first = f.authorities.current().active().id().to_owned();
    f.authorities.prepare().await.unwrap();
    f.authorities.activate(None).await.unwrap();
    let err = f
        .authorities
        .revoke_authority(Some(&first))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not tainted: taint it first"), "{err}");
    let active = f.authorities.current().active().id().to_owned();
    let err = f
        .authorities
        .revoke_authority(Some(&active))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is active"), "{err}");

    f.authorities.taint(None).await.unwrap();
    assert_eq!(
        states(&f.authorities.current())[1],
        (AuthorityState::Old, true)
    );
    f.authorities.revoke_authority(None).await.unwrap();
    let snapshot = f.authorities.current();
    assert_eq!(states(&snapshot), vec![(AuthorityState::Active, false)]);
    assert_eq!(snapshot.roots_der().len(), 1);
    assert!(snapshot.entry(&first).is_none());
    // And it stays revoked across a restart.
    let again = open_at(&f.path, f.clock.clone(), rotation(3600))
        .await
        .unwrap();
    assert!(again.current().entry(&first).is_none());
}

#[tokio::test]
async fn a_revoked_serial_is_in_every_authoritys_crl_until_it_expires() {
    let f = fixture(3600).await;
    f.authorities.prepare().await.unwrap();
    let not_after = START + Duration::minutes(10);
    f.authorities
        .revoke_certificate("0a1b2c", RevocationReason::KeyCompromise, not_after)
        .await
        .unwrap();
    let snapshot = f.authorities.current();
    assert!(snapshot.is_revoked("0a1b2c"));
    for entry in snapshot.entries() {
        let (_, crl) = CertificateRevocationList::from_der(&entry.crl_der).unwrap();
        let (_, issuer) =
            x509_parser::certificate::X509Certificate::from_der(entry.authority.signing_cert_der())
                .unwrap();
        crl.verify_signature(issuer.public_key())
            .expect("signed by its authority");
        let serials: Vec<Vec<u8>> = crl
            .iter_revoked_certificates()
            .map(|r| r.raw_serial().to_vec())
            .collect();
        assert_eq!(serials, vec![vec![0x0a, 0x1b, 0x2c]]);
    }
    let err = f
        .authorities
        .revoke_certificate("0a1b2c", RevocationReason::Superseded, not_after)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("already revoked"), "{err}");
    // After the certificate expired, the next change drops it from the CRLs.
    f.clock.advance(Duration::minutes(11));
    f.authorities.activate(None).await.unwrap();
    assert!(!f.authorities.current().is_revoked("0a1b2c"));
}

#[tokio::test]
async fn the_schedule_prepares_at_half_life_activates_at_a_sixth_and_drops_the_expired() {
    let f = fixture(600).await;
    let first = f.authorities.current().active().id().to_owned();
    // Nothing due at the start.
    let next = f.authorities.tick().await;
    assert!(next > START, "next look at {next}");
    assert!(f.authorities.current().prepared().is_none());
    // Half-way (300 s left of 600): prepared.
    f.clock.set(START + Duration::seconds(301));
    f.authorities.tick().await;
    assert!(f.authorities.current().prepared().is_some());
    assert_eq!(f.authorities.current().active().id(), first);
    // A sixth left (100 s): activated.
    f.clock.set(START + Duration::seconds(501));
    f.authorities.tick().await;
    assert_ne!(f.authorities.current().active().id(), first);
    // A restart in between resumes from the stored state.
    let again = open_at(&f.path, f.clock.clone(), rotation(600))
        .await
        .unwrap();
    assert_eq!(states(&again.current()), states(&f.authorities.current()));
    // Expired: the old authority leaves.
    f.clock.set(START + Duration::seconds(601));
    f.authorities.tick().await;
    assert!(f.authorities.current().entry(&first).is_none());
    assert_eq!(f.authorities.current().entries().len(), 1);
}

#[tokio::test]
async fn a_second_writer_with_a_stale_generation_conflicts_and_refresh_follows_it() {
    let f = fixture(3600).await;
    let follower = open_at(&f.path, f.clock.clone(), rotation(3600))
        .await
        .unwrap();
    f.authorities.prepare().await.unwrap();
    assert!(follower.current().prepared().is_none());
    assert!(follower.refresh().await.unwrap());
    assert!(follower.current().prepared().is_some());

    let store = FileStore::new(f.path.clone());
    let mut stale = store.load().await.unwrap().unwrap();
    stale.generation -= 1; // the generation already stored, not the next
    let err = store.save(&stale).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
}

#[tokio::test]
async fn a_broken_plugin_ca_is_named_and_the_current_authority_keeps_signing() {
    let f = fixture(3600).await;
    let active = f.authorities.current().active().id().to_owned();
    let broken = Err(crate::pki::authority::AuthorityError::NoPluginFiles {
        store: "/etc/cacerts".into(),
    });
    assert!(f
        .authorities
        .offer_plugin(broken, "/etc/cacerts")
        .await
        .unwrap()
        .is_none());
    let snapshot = f.authorities.current();
    assert_eq!(snapshot.active().id(), active);
    assert!(snapshot.prepared().is_none());
    assert!(
        snapshot.problems()[0].contains("/etc/cacerts was refused"),
        "{:?}",
        snapshot.problems()
    );

    // A good one becomes the prepared authority, and the problem clears.
    let good = Authority::create_rotation_root(
        "plug-in",
        &AuthorityConfig::default(),
        Duration::days(30),
        f.clock.as_ref(),
    )
    .unwrap();
    let good_id = good.id().to_owned();
    f.authorities
        .offer_plugin(Ok(good), "/etc/cacerts")
        .await
        .unwrap();
    let snapshot = f.authorities.current();
    assert_eq!(snapshot.prepared().unwrap().id, good_id);
    assert_eq!(snapshot.prepared().unwrap().source, AuthoritySource::PlugIn);
    assert!(snapshot.problems().is_empty());
}

#[test]
fn serials_are_normalized_as_the_audit_log_records_them() {
    assert_eq!(normalize_serial("0A:1B:2C").as_deref(), Some("0a1b2c"));
    assert_eq!(normalize_serial("0x00ff").as_deref(), Some("ff"));
    assert_eq!(normalize_serial("abc").as_deref(), Some("0abc"));
    assert_eq!(normalize_serial("xyz"), None);
    assert_eq!(normalize_serial(""), None);
    assert_eq!(normalize_serial(&"a".repeat(41)), None);
}

#[tokio::test]
async fn an_intermediate_sharing_its_root_with_another_authority_is_not_revoked() {
    use crate::pki::authority::MemoryFiles;
    use crate::pki::fixtures::{clock as fixed_clock, TestCa};
    let root = TestCa::root(TestCa::params("shared root"));
    let first = root.issue(TestCa::params("first intermediate"));
    let second = root.issue(TestCa::params("second intermediate"));
    let clock: SharedClock = Arc::new(fixed_clock());
    let load = |signing: &TestCa| {
        let mut files = MemoryFiles::new("test");
        files.insert("ca-cert.pem", signing.cert_pem().into_bytes());
        files.insert("ca-key.pem", signing.key_pem().into_bytes());
        files.insert("root-cert.pem", root.cert_pem().into_bytes());
        Authority::load_plugin_files(&files, &AuthorityConfig::default(), clock.as_ref())
    };
    let authorities = Authorities::in_memory(
        load(&first).unwrap(),
        AuthoritySource::PlugIn,
        clock.clone(),
    )
    .unwrap();
    authorities
        .offer_plugin(load(&second), "test")
        .await
        .unwrap()
        .unwrap();
    // Offered again (another replica saw the same change): nothing new.
    assert!(authorities
        .offer_plugin(load(&second), "test")
        .await
        .unwrap()
        .is_none());
    authorities.activate(None).await.unwrap();
    authorities.taint(None).await.unwrap();
    let err = authorities
        .revoke_authority(None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("shares its root with authority"), "{err}");
    assert!(err.contains("revoke them by serial"), "{err}");
    assert_eq!(authorities.current().entries().len(), 2, "nothing changed");
}
