//! End-to-end Coconut: threshold issuance, showing, single and batch verification, bandwidth
//! spends and wire encodings.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// Named `coconut` so `cargo test coconut` selects these tests.
mod coconut {
    use lethe_crypto::coconut::bandwidth::{
        bandwidth_parameters, issue_bandwidth, request_bandwidth, verify_spend, verify_spends,
        BandwidthCredential, BandwidthSpend, MemorySpentTags,
    };
    use lethe_crypto::coconut::*;
    use rand_core_06::OsRng;

    const BW: u64 = 200 * 1024 * 1024;
    const EXPIRY: u32 = 20_000;

    struct Setup {
        params: Parameters,
        keys: Vec<KeyShare>,
        vk: VerificationKey,
    }

    fn setup(t: usize, n: usize) -> Setup {
        let params = bandwidth_parameters().unwrap();
        let keys = ttp_keygen(&params, t, n, &mut OsRng).unwrap();
        let shares: Vec<(u64, &VerificationKey)> = keys[..t]
            .iter()
            .map(|k| (k.index, &k.verification))
            .collect();
        let vk = aggregate_verification_keys(&shares).unwrap();
        vk.check(&params).unwrap();
        Setup { params, keys, vk }
    }

    /// Issues a credential using the signers at `who` (indices into keys).
    fn issue(s: &Setup, who: &[usize]) -> BandwidthCredential {
        let (pending, req) = request_bandwidth(&s.params, &s.vk, BW, EXPIRY, &mut OsRng).unwrap();
        let req = BlindSignRequest::from_bytes(&req.to_bytes()).unwrap();
        let shares: Vec<PartialSignature> = who
            .iter()
            .map(|&i| {
                let k = &s.keys[i];
                let b = issue_bandwidth(&s.params, &s.vk, &k.secret, &req, BW, EXPIRY).unwrap();
                let b = BlindedSignature::from_bytes(&b.to_bytes()).unwrap();
                pending.unblind(k.index, &k.verification, &b).unwrap()
            })
            .collect();
        pending.aggregate(&s.params, &s.vk, &shares).unwrap()
    }

    #[test]
    fn threshold_issue_show_verify_and_double_spend() {
        let s = setup(3, 5);
        // Any t signers work, and any t key shares give the same master key.
        let other: Vec<(u64, &VerificationKey)> = s.keys[2..]
            .iter()
            .map(|k| (k.index, &k.verification))
            .collect();
        assert_eq!(aggregate_verification_keys(&other).unwrap(), s.vk);
        let cred = issue(&s, &[4, 1, 2]);
        let cred = BandwidthCredential::from_bytes(&cred.to_bytes()).unwrap();
        assert_eq!(cred.bandwidth(), BW);

        let ctx = b"gateway-A|nonce-1";
        let spend = cred.spend(&s.params, &s.vk, ctx, &mut OsRng).unwrap();
        let spend = BandwidthSpend::from_bytes(&spend.to_bytes()).unwrap();
        assert_eq!(spend.to_bytes().len(), 12 + 48 * 4 + 96 * 2 + 32 + 1 + 64);
        let mut store = MemorySpentTags::default();
        assert_eq!(
            verify_spend(&s.params, &s.vk, &spend, ctx, EXPIRY, &mut store),
            Ok(BW)
        );
        // Same proof again, and a fresh proof of the same credential: the tag is the same.
        assert_eq!(
            verify_spend(&s.params, &s.vk, &spend, ctx, EXPIRY, &mut store),
            Err(CoconutError::DoubleSpend)
        );
        let again = cred
            .spend(&s.params, &s.vk, b"gateway-A|nonce-2", &mut OsRng)
            .unwrap();
        assert_eq!(again.tag(), spend.tag());
        assert_ne!(again.theta(), spend.theta(), "shows are re-randomised");
        assert_eq!(
            verify_spend(
                &s.params,
                &s.vk,
                &again,
                b"gateway-A|nonce-2",
                EXPIRY,
                &mut store
            ),
            Err(CoconutError::DoubleSpend)
        );
        // Replay of the proof under another context, and after expiry.
        let mut fresh = MemorySpentTags::default();
        assert_eq!(
            verify_spend(
                &s.params,
                &s.vk,
                &spend,
                b"gateway-B|nonce-1",
                EXPIRY,
                &mut fresh
            ),
            Err(CoconutError::Proof)
        );
        assert_eq!(
            verify_spend(&s.params, &s.vk, &spend, ctx, EXPIRY + 1, &mut fresh),
            Err(CoconutError::Expired)
        );
    }

    #[test]
    fn batch_verification_and_bisection() {
        let s = setup(2, 3);
        let creds: Vec<BandwidthCredential> = (0..3).map(|_| issue(&s, &[0, 2])).collect();
        let ctx = b"gw|batch";
        let mut spends: Vec<BandwidthSpend> = creds
            .iter()
            .flat_map(|c| (0..2).map(|_| c.spend(&s.params, &s.vk, ctx, &mut OsRng).unwrap()))
            .collect();
        let public = bandwidth::public_attributes(BW, EXPIRY);
        let items = |sp: &[BandwidthSpend]| -> Vec<(Theta, [Scalar; 2])> {
            sp.iter().map(|x| (x.theta().clone(), public)).collect()
        };
        let owned = items(&spends);
        let show_items: Vec<ShowItem<'_>> = owned
            .iter()
            .map(|(t, p)| ShowItem {
                theta: t,
                public: p,
                context: ctx,
            })
            .collect();
        verify_batch(&s.params, &s.vk, &show_items).unwrap();
        assert!(find_invalid(&s.params, &s.vk, &show_items).is_empty());

        // Corrupt items 1 and 4 (bandwidth claim inflated): the batch fails, bisection names them.
        for i in [1, 4] {
            spends[i] = BandwidthSpend::from_parts(spends[i].theta().clone(), BW * 10, EXPIRY);
        }
        let mut store = MemorySpentTags::default();
        let refs: Vec<(&BandwidthSpend, &[u8])> = spends.iter().map(|x| (x, &ctx[..])).collect();
        let results = verify_spends(&s.params, &s.vk, &refs, EXPIRY, &mut store);
        // Items 0/1 share a credential, as do 2/3 and 4/5: second spends are double spends.
        assert_eq!(results[0], Ok(BW));
        assert_eq!(results[1], Err(CoconutError::Proof));
        assert_eq!(results[2], Ok(BW));
        assert_eq!(results[3], Err(CoconutError::DoubleSpend));
        assert_eq!(results[4], Err(CoconutError::Proof));
        assert_eq!(results[5], Ok(BW));
    }

    #[test]
    fn generic_credential_with_one_private_attribute() {
        let params = Parameters::new(3).unwrap();
        let keys = ttp_keygen(&params, 1, 1, &mut OsRng).unwrap();
        let vk = keys[0].verification.clone();
        let private = [Scalar::from(7u64)];
        let public = [Scalar::from(1u64), Scalar::from(2u64)];
        let (secrets, req) =
            prepare_blind_sign(&params, &vk, &private, &public, &mut OsRng).unwrap();
        let b = blind_sign(&params, &vk, &keys[0].secret, &req, &public).unwrap();
        let sig = b.unblind(&vk, &secrets).unwrap();
        let partial = PartialSignature {
            index: 1,
            signature: sig,
        };
        partial.verify(&params, &vk, &secrets).unwrap();
        let sig = aggregate_signatures(&params, &vk, &[partial], &secrets).unwrap();
        assert_eq!(Signature::from_bytes(&sig.to_bytes()).unwrap(), sig);
        // The signer refuses a request whose public attributes differ from what the client hashed.
        let other = [Scalar::from(1u64), Scalar::from(3u64)];
        assert_eq!(
            blind_sign(&params, &vk, &keys[0].secret, &req, &other),
            Err(CoconutError::Proof)
        );
        let theta =
            prove_credential(&params, &vk, &sig, &private, &public, b"c", &mut OsRng).unwrap();
        let theta = Theta::from_bytes(&theta.to_bytes()).unwrap();
        verify_credential(&params, &vk, &theta, &public, b"c").unwrap();
        assert!(verify_credential(&params, &vk, &theta, &other, b"c").is_err());
    }

    #[test]
    fn bad_signer_share_is_caught() {
        let s = setup(2, 3);
        let (pending, req) = request_bandwidth(&s.params, &s.vk, BW, EXPIRY, &mut OsRng).unwrap();
        let good = issue_bandwidth(&s.params, &s.vk, &s.keys[0].secret, &req, BW, EXPIRY).unwrap();
        // Signer 2 signs with signer 3's key: its share fails under its own key share.
        let bad = issue_bandwidth(&s.params, &s.vk, &s.keys[2].secret, &req, BW, EXPIRY).unwrap();
        let g = pending.unblind(1, &s.keys[0].verification, &good).unwrap();
        let b = pending.unblind(2, &s.keys[1].verification, &bad).unwrap();
        pending
            .verify_share(&s.params, &s.keys[0].verification, &g)
            .unwrap();
        assert!(pending
            .verify_share(&s.params, &s.keys[1].verification, &b)
            .is_err());
        assert_eq!(
            pending.aggregate(&s.params, &s.vk, &[g, b]).err(),
            Some(CoconutError::Signature)
        );
    }

    #[test]
    fn keys_and_encodings() {
        let params = Parameters::new(2).unwrap();
        assert!(Parameters::new(0).is_err());
        assert!(Parameters::new(MAX_ATTRIBUTES + 1).is_err());
        assert_eq!(
            ttp_keygen(&params, 0, 3, &mut OsRng).err(),
            Some(CoconutError::Indices)
        );
        assert_eq!(
            ttp_keygen(&params, 4, 3, &mut OsRng).err(),
            Some(CoconutError::Indices)
        );
        let keys = ttp_keygen(&params, 2, 3, &mut OsRng).unwrap();
        let vk = &keys[0].verification;
        let bytes = vk.to_bytes();
        assert_eq!(bytes.len(), 96 + 1 + 2 * 48 + 2 * 96);
        assert_eq!(&VerificationKey::from_bytes(&bytes).unwrap(), vk);
        let sk = SecretKey::from_bytes(&keys[0].secret.to_bytes()).unwrap();
        assert_eq!(&sk.verification_key(&params), vk);
        // Duplicate indices cannot be aggregated.
        let dup = [(1u64, vk), (1u64, vk)];
        assert_eq!(
            aggregate_verification_keys(&dup).err(),
            Some(CoconutError::Indices)
        );
    }
}
