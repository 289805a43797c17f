use super::*;

const M: &str = "id: t\nmode: execute\nscope:\n  write: [\"/srv/**\"]\n";

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

#[test]
fn a_grant_covers_its_manifest_its_keys_and_its_time() {
    let now = Timestamp(1_795_000_000_000_000_000);
    let later = Timestamp(now.0 + 3_600_000_000_000);
    let g = Grant::sign(&key(1), M, "alice", later);
    let keys = [key(1).verifying_key()];
    let ok = g.verify(M, &keys, now).unwrap();
    assert_eq!(ok.by, "alice");
    // Another manifest, an edited one, another signer, after its time.
    assert!(g.verify(&M.replace("/srv", "/"), &keys, now).unwrap_err().contains("another manifest"));
    assert!(g.verify(M, &[key(2).verifying_key()], now).unwrap_err().contains("may not grant"));
    assert!(g.verify(M, &keys, Timestamp(later.0 + 1)).unwrap_err().contains("ran out"));
    let mut widened = g.clone();
    widened.by = "root".into();
    assert!(widened.verify(M, &keys, now).unwrap_err().contains("bad signature"));
    let mut extended = g.clone();
    extended.not_after = "2099-01-01T00:00:00Z".into();
    assert!(extended.verify(M, &keys, now).unwrap_err().contains("bad signature"));
    // Through check: keys configured means a grant is needed.
    let text = serde_json::to_string(&g).unwrap();
    assert!(check(M, None, None, true, now, Resolve::Here).unwrap().is_none());
    assert!(check(M, None, Some(&keys), true, now, Resolve::Here).unwrap_err().contains("no grant"));
    assert!(check(M, Some("{}"), Some(&keys), true, now, Resolve::Here).unwrap_err().contains("not one"));
    assert_eq!(check(M, Some(&text), Some(&keys), true, now, Resolve::Here).unwrap().unwrap().by, "alice");
    // Signing not required: no grant starts unsigned, a bad one is refused still.
    assert!(check(M, None, Some(&keys), false, now, Resolve::Here).unwrap().is_none());
    assert!(check(M, Some("{}"), Some(&keys), false, now, Resolve::Here).unwrap_err().contains("not one"));
    assert_eq!(check(M, Some(&text), Some(&keys), false, now, Resolve::Here).unwrap().unwrap().by, "alice");
}

const LEAD: &str = "id: lead\nmode: execute\nenforcement: enforce\nagent: spiffe://a/lead\n\
                    principal: alice\nexpires_in: 2h\nscope:\n  write: [\"/srv/**\"]\n";
const SUB: &str = "id: sub\nmode: execute\nexpires_in: 1h\nscope:\n  write: [\"/srv/sub/**\"]\n";

fn hexkey(n: u8) -> String {
    hex::encode(key(n).verifying_key().to_bytes())
}

/// alice (1) grants LEAD, delegating to bob (2); bob grants SUB under it.
fn two(now: Timestamp) -> Chain {
    let root = Grant::sign_under(
        &key(1),
        LEAD,
        "alice",
        Timestamp(now.0 + 7_200_000_000_000),
        None,
        vec![hexkey(2)],
    );
    let sub =
        Grant::sign_under(&key(2), SUB, "bob", Timestamp(now.0 + 3_600_000_000_000), Some(root.id()), vec![]);
    Chain::under(File::One(root), LEAD.into(), sub)
}

#[test]
fn a_chain_holds_from_a_trusted_root_down_each_delegated_link() {
    let now = Timestamp(1_795_000_000_000_000_000);
    let c = two(now);
    let alice = [key(1).verifying_key()];
    let g = c.verify(SUB, &alice, now).unwrap();
    assert_eq!(
        (g.by.as_str(), g.key.as_str(), g.id.as_str()),
        ("bob", hexkey(2).as_str(), c.grant.id().as_str())
    );
    assert_eq!(
        g.chain,
        vec![Ancestor {
            task: "lead".into(),
            by: "alice".into(),
            key: hexkey(1),
            grant: c.links[0].grant.id(),
            not_after: c.links[0].grant.not_after.clone(),
        }]
    );
    // What a local sub-task takes from its parent, it takes from the remote one.
    let mut t = crate::task::parse_unresolved(
        SUB,
        std::path::Path::new("sub.yaml"),
        now,
        crate::task::scope::Resolve::Here,
    )
    .unwrap();
    t.take_grant(Some(g));
    assert!(t.enforce);
    assert_eq!(t.agent.as_deref(), Some("spiffe://a/lead"));
    assert_eq!(t.principal.as_deref(), Some("alice"));
    let lead = format!("lead@{}", &c.links[0].grant.id()[..16]);
    assert_eq!((t.parents.len(), t.remote_parents.clone()), (0, vec![lead]));
    // A local sub-task of it runs on that grant too (its events are not unsigned).
    let mut local = crate::task::parse_unresolved(
        SUB,
        std::path::Path::new("s.yaml"),
        now,
        crate::task::scope::Resolve::Here,
    )
    .unwrap();
    assert!(!local.under_grant);
    local.inherit(&t);
    assert!(local.under_grant && local.granted.is_none());
    // Through check, as a grant file's text.
    let text = serde_json::to_string(&c).unwrap();
    assert_eq!(
        check(SUB, Some(&text), Some(&alice), true, now, Resolve::Here).unwrap().unwrap().chain.len(),
        1
    );
    // A root grant keeps the bytes grants had before delegation existed.
    let plain = serde_json::to_value(Grant::sign(&key(1), M, "alice", now)).unwrap();
    assert!(plain.get("parent").is_none() && plain.get("delegates").is_none());
}

#[test]
fn every_way_to_forge_or_widen_a_chain_is_refused_by_link() {
    let now = Timestamp(1_795_000_000_000_000_000);
    let alice = [key(1).verifying_key()];
    let err = |c: &Chain, m: &str| c.verify(m, &alice, now).unwrap_err();
    let good = two(now);
    let resign = |c: &Chain, k: u8, m: &str, by: &str, until: i128, parent: Option<String>| {
        let mut c = c.clone();
        c.grant = Grant::sign_under(&key(k), m, by, Timestamp(now.0 + until), parent, vec![]);
        c
    };
    let pid = Some(good.links[0].grant.id());
    // The root by a key this host does not take.
    assert!(
        good.verify(SUB, &[key(2).verifying_key()], now).unwrap_err().starts_with("link 1 of 2: signed by")
    );
    // The sub-task signed by a key the root does not delegate to.
    let m = resign(&good, 3, SUB, "mallory", 3_600_000_000_000, pid.clone());
    assert!(
        err(&m, SUB).contains("link 2 of 2: signed by key") && err(&m, SUB).contains("does not delegate")
    );
    // A delegate widening the task.
    let wide = SUB.replace("/srv/sub/**", "/etc/**");
    let w = resign(&good, 2, &wide, "bob", 3_600_000_000_000, pid.clone());
    assert!(
        err(&w, &wide).contains("not within its parent's: scope.write \"/etc/**\""),
        "{}",
        err(&w, &wide)
    );
    // Dropping the parent's enforcement is no escape: it is inherited (above).
    // Outliving the parent's grant.
    let late = resign(&good, 2, SUB, "bob", 9_000_000_000_000, pid.clone());
    assert!(err(&late, SUB).contains("later than its parent grant's"));
    // Spliced under another grant, or under none.
    let other = Grant::sign_under(&key(1), LEAD, "alice", Timestamp(now.0 + 1), None, vec![hexkey(2)]);
    let spliced = resign(&good, 2, SUB, "bob", 3_600_000_000_000, Some(other.id()));
    assert!(err(&spliced, SUB).contains("names another parent grant"));
    let orphan = resign(&good, 2, SUB, "bob", 3_600_000_000_000, None);
    assert!(err(&orphan, SUB).contains("names another parent grant"));
    // The parent's manifest edited in the file (its grant covers other text).
    let mut edited = good.clone();
    edited.links[0].manifest = LEAD.replace("/srv/**", "/**");
    assert!(err(&edited, SUB).starts_with("link 1 of 2: it grants another manifest"));
    // The root grant's delegates edited.
    let mut more = good.clone();
    more.links[0].grant.delegates.push(hexkey(3));
    assert!(err(&more, SUB).contains("bad signature"));
    // Another manifest than the sub-task's grant covers.
    assert!(err(&good, &SUB.replace("/srv/sub", "/srv/sub2")).contains("another manifest"));
    // After the root ran out.
    assert!(
        good.verify(SUB, &alice, Timestamp(now.0 + 7_300_000_000_000)).unwrap_err().starts_with("link 1")
    );
    // A delegated grant alone, without the chain that gives it authority.
    let alone = serde_json::to_string(&good.grant).unwrap();
    let e = check(SUB, Some(&alone), Some(&alice), true, now, Resolve::Here).unwrap_err();
    assert!(e.contains("holds only with its chain"), "{e}");
    // No ancestors, or too many.
    let mut none = good.clone();
    none.links.clear();
    assert!(err(&none, SUB).contains("at least"));
    let mut deep = good.clone();
    deep.links = vec![good.links[0].clone(); MAX_ANCESTORS + 1];
    assert!(err(&deep, SUB).contains("more than"));
}

#[test]
fn a_delegate_passes_on_only_what_it_was_given() {
    let now = Timestamp(1_795_000_000_000_000_000);
    let alice = [key(1).verifying_key()];
    let mut two = two(now);
    // bob's grant delegates to carol (4); carol grants a third level.
    two.grant = Grant::sign_under(
        &key(2),
        SUB,
        "bob",
        Timestamp(now.0 + 3_600_000_000_000),
        Some(two.links[0].grant.id()),
        vec![hexkey(4)],
    );
    let third = "id: third\nmode: execute\nexpires_in: 30m\nscope:\n  write: [\"/srv/sub/x/**\"]\n";
    let g3 = Grant::sign_under(
        &key(4),
        third,
        "carol",
        Timestamp(now.0 + 60_000_000_000),
        Some(two.grant.id()),
        vec![],
    );
    let three = Chain::under(File::Chain(Box::new(two.clone())), SUB.into(), g3);
    let g = three.verify(third, &alice, now).unwrap();
    let ids: Vec<&str> = g.chain.iter().map(|a| a.task.as_str()).collect();
    assert_eq!(ids, ["lead", "sub"]);
    let mut t = crate::task::parse_unresolved(
        third,
        std::path::Path::new("t.yaml"),
        now,
        crate::task::scope::Resolve::Here,
    )
    .unwrap();
    t.take_grant(Some(g));
    let q: Vec<&str> = t.remote_parents.iter().map(|p| p.split('@').next().unwrap()).collect();
    assert_eq!(q, ["sub", "lead"]);
    assert!(t.enforce && t.agent.as_deref() == Some("spiffe://a/lead"));
    // carol cannot sign directly under the root (alice delegated to bob only).
    let direct = Chain::under(
        File::One(two.links[0].grant.clone()),
        LEAD.into(),
        Grant::sign_under(
            &key(4),
            third,
            "carol",
            Timestamp(now.0 + 1),
            Some(two.links[0].grant.id()),
            vec![],
        ),
    );
    assert!(direct.verify(third, &alice, now).unwrap_err().contains("does not delegate"));
}

#[test]
fn a_remote_sub_task_ends_with_its_parents_grant_and_keeps_its_limits() {
    let now = Timestamp(1_795_000_000_000_000_000);
    let alice = [key(1).verifying_key()];
    let hour = Timestamp(now.0 + 3_600_000_000_000);
    let parent =
        "id: p\nmode: execute\nscope:\n  write: [\"/srv/**\"]\nlimits:\n  deletes: 10\n  on_exceed: freeze\n";
    // Enforced by its grant alone (no manifest says so): so are its sub-tasks.
    let root = Grant::sign_under(&key(1), parent, "alice", hour, None, vec![hexkey(2)]).enforced(&key(1));
    let under = |child: &str| {
        let g = Grant::sign_under(&key(2), child, "bob", hour, Some(root.id()), vec![]);
        Chain::under(File::One(root.clone()), parent.into(), g).verify(child, &alice, now)
    };
    let child = |limits: &str| format!("id: c\nmode: execute\nscope:\n  write: [\"/srv/c/**\"]\n{limits}");
    assert!(under(&child("")).unwrap_err().contains("declares them too"));
    let e = under(&child("limits:\n  deletes: 20\n  on_exceed: freeze\n")).unwrap_err();
    assert!(e.contains("limits.deletes 20 is not within the parent's (10)"), "{e}");
    let e = under(&child("limits:\n  deletes: 5\n  on_exceed: alert\n")).unwrap_err();
    assert!(e.contains("milder"), "{e}");
    let ok = child("limits:\n  deletes: 5\n  on_exceed: kill\n");
    let g = under(&ok).unwrap();
    let mut t = crate::task::parse_unresolved(
        &ok,
        std::path::Path::new("c.yaml"),
        now,
        crate::task::scope::Resolve::Here,
    )
    .unwrap();
    assert!(!t.enforce && t.expires.is_none());
    t.take_grant(Some(g));
    assert!(t.enforce, "the root grant's enforcement reaches the sub-task");
    // No expiry of its own or its parent's: it ends with the parent's grant.
    let mut b = [0u8; 30];
    assert_eq!(t.expires.map(|e| e.format(&mut b).to_string()), Some(root.not_after.clone()));
}
