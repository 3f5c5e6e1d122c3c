//! Forgery regression tests: each case is a presentation an attacker can actually build, and
//! each must be refused. Mirrors the classes nym-compact-ecash 2.0 fixed (credentials.md §2.3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// Named `coconut` so `cargo test coconut` selects these tests.
mod coconut {
    use blstrs::{pairing as e, G1Affine, G1Projective, G2Affine, G2Projective, Scalar};
    use ff::Field;
    use group::{prime::PrimeCurveAffine, Curve, Group};
    use lethe_crypto::coconut::bandwidth::{
        public_attributes, verify_spends, BandwidthSpend, MemorySpentTags,
    };
    use lethe_crypto::coconut::hazmat::{challenge_of, prove_randomised};
    use lethe_crypto::coconut::*;
    use rand_core_06::OsRng;

    const BW: u64 = 1 << 30;
    const EXPIRY: u32 = 21_000;
    const CTX: &[u8] = b"gateway|nonce";

    // Theta wire layout offsets (see Theta::to_bytes).
    const H: usize = 0;
    const S: usize = 48;
    const KAPPA: usize = 96;
    const ZETA: usize = 192;
    const T_KAPPA: usize = 240;
    const T_ZETA: usize = 336;
    const Z_R: usize = 384;
    const COUNT: usize = 416;
    const Z: usize = 417;

    struct Fx {
        params: Parameters,
        vk: VerificationKey,
        sig: Signature,
        private: [Scalar; 2],
        public: [Scalar; 2],
    }

    /// An honestly issued bandwidth-shaped credential with known attributes (t = 2 of n = 3).
    fn fixture() -> Fx {
        let params = Parameters::new(4).unwrap();
        let keys = ttp_keygen(&params, 2, 3, &mut OsRng).unwrap();
        let vk =
            aggregate_verification_keys(&[(1, &keys[0].verification), (3, &keys[2].verification)])
                .unwrap();
        let private = [Scalar::random(&mut OsRng), Scalar::random(&mut OsRng)];
        let public = public_attributes(BW, EXPIRY);
        let (secrets, req) =
            prepare_blind_sign(&params, &vk, &private, &public, &mut OsRng).unwrap();
        let shares: Vec<PartialSignature> = [0usize, 1]
            .iter()
            .map(|&i| {
                let b = blind_sign(&params, &vk, &keys[i].secret, &req, &public).unwrap();
                PartialSignature {
                    index: keys[i].index,
                    signature: b.unblind(&keys[i].verification, &secrets).unwrap(),
                }
            })
            .collect();
        let sig = aggregate_signatures(&params, &vk, &shares, &secrets).unwrap();
        Fx {
            params,
            vk,
            sig,
            private,
            public,
        }
    }

    fn sig_parts(sig: &Signature) -> (G1Affine, G1Affine) {
        let b = sig.to_bytes();
        let h = G1Affine::from_compressed(b[..48].try_into().unwrap()).unwrap();
        let s = G1Affine::from_compressed(b[48..].try_into().unwrap()).unwrap();
        (h, s)
    }

    fn vk_g2(vk: &VerificationKey) -> (G2Affine, Vec<G2Affine>) {
        let b = vk.to_bytes();
        let q = b[96] as usize;
        let alpha = G2Affine::from_compressed(b[..96].try_into().unwrap()).unwrap();
        let off = 97 + 48 * q;
        let betas = (0..q)
            .map(|j| {
                G2Affine::from_compressed(b[off + 96 * j..off + 96 * (j + 1)].try_into().unwrap())
                    .unwrap()
            })
            .collect();
        (alpha, betas)
    }

    fn patch(theta: &Theta, at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut b = theta.to_bytes();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        b
    }

    /// An honest presentation of the fixture's credential.
    fn prove_honest(fx: &Fx) -> Theta {
        prove_credential(
            &fx.params,
            &fx.vk,
            &fx.sig,
            &fx.private,
            &fx.public,
            CTX,
            &mut OsRng,
        )
        .unwrap()
    }

    /// A presentation of the fixture's attributes over a hand-made randomised signature (h, s)
    /// with blinding r.
    fn prove_with_signature(fx: &Fx, h: &G1Affine, s: &G1Affine, r: &Scalar) -> Theta {
        prove_randomised(
            &fx.params,
            &fx.vk,
            h,
            s,
            r,
            &fx.private,
            &fx.public,
            CTX,
            &mut OsRng,
        )
        .unwrap()
    }

    fn verify(fx: &Fx, theta: &Theta) -> Result<(), CoconutError> {
        verify_credential(&fx.params, &fx.vk, theta, &fx.public, CTX)
    }

    /// Randomise σ by hand: (r'·h, r'·s + r·r'·h), returning r too.
    fn randomise(sig: &Signature) -> (G1Affine, G1Affine, Scalar) {
        let (h, s) = sig_parts(sig);
        let rp = Scalar::random(&mut OsRng);
        let r = Scalar::random(&mut OsRng);
        let h2 = (G1Projective::from(h) * rp).to_affine();
        let s2 = (G1Projective::from(s) * rp + G1Projective::from(h2) * r).to_affine();
        (h2, s2, r)
    }

    #[test]
    fn honest_show_verifies() {
        let fx = fixture();
        let theta = prove_honest(&fx);
        verify(&fx, &theta).unwrap();
        let (h, s, r) = randomise(&fx.sig);
        let theta = prove_with_signature(&fx, &h, &s, &r);
        verify(&fx, &theta).unwrap();
    }

    /// Class 1, unbound attribute: claiming a different public attribute (bandwidth), a show bound
    /// to another context, or a tag computed from another serial is refused.
    #[test]
    fn unbound_attribute_is_refused() {
        let fx = fixture();
        let theta = prove_honest(&fx);
        let inflated = public_attributes(BW * 100, EXPIRY);
        assert!(verify_credential(&fx.params, &fx.vk, &theta, &inflated, CTX).is_err());
        let later = public_attributes(BW, EXPIRY + 365);
        assert!(verify_credential(&fx.params, &fx.vk, &theta, &later, CTX).is_err());
        assert!(verify_credential(&fx.params, &fx.vk, &theta, &fx.public, b"other").is_err());

        // A prover that shows the right credential but a tag of serial' = serial + 1: the serial in
        // ζ and in κ share one response, so no consistent proof exists. Built by hand with the κ
        // part honest and the ζ part honest for serial'.
        let (h, s, r) = randomise(&fx.sig);
        let (alpha, betas) = vk_g2(&fx.vk);
        let delta = G1Projective::from(fx.params.tag_base());
        let g2 = G2Projective::generator();
        let m = [fx.private[0], fx.private[1], fx.public[0], fx.public[1]];
        let mut kappa = G2Projective::from(alpha) + g2 * r;
        for (b, mj) in betas.iter().zip(&m) {
            kappa += G2Projective::from(b) * mj;
        }
        let fake_serial = fx.private[0] + Scalar::ONE;
        let zeta = delta * fake_serial;
        let k: Vec<Scalar> = (0..3).map(|_| Scalar::random(&mut OsRng)).collect();
        let t_kappa =
            g2 * k[0] + G2Projective::from(betas[0]) * k[1] + G2Projective::from(betas[1]) * k[2];
        let t_zeta = delta * k[1];
        let base = prove_honest(&fx);
        let mut b = base.to_bytes();
        b[H..H + 48].copy_from_slice(&h.to_compressed());
        b[S..S + 48].copy_from_slice(&s.to_compressed());
        b[KAPPA..KAPPA + 96].copy_from_slice(&kappa.to_affine().to_compressed());
        b[ZETA..ZETA + 48].copy_from_slice(&zeta.to_affine().to_compressed());
        b[T_KAPPA..T_KAPPA + 96].copy_from_slice(&t_kappa.to_affine().to_compressed());
        b[T_ZETA..T_ZETA + 48].copy_from_slice(&t_zeta.to_affine().to_compressed());
        let draft = Theta::from_bytes(&b).unwrap();
        let c = challenge_of(&fx.params, &fx.vk, &draft, &fx.public, CTX);
        // Try both choices of z_0: the κ-consistent one and the ζ-consistent one.
        for serial in [fx.private[0], fake_serial] {
            b[Z_R..Z_R + 32].copy_from_slice(&(k[0] - c * r).to_bytes_le());
            b[Z..Z + 32].copy_from_slice(&(k[1] - c * serial).to_bytes_le());
            b[Z + 32..Z + 64].copy_from_slice(&(k[2] - c * fx.private[1]).to_bytes_le());
            let forged = Theta::from_bytes(&b).unwrap();
            assert_eq!(verify(&fx, &forged), Err(CoconutError::Proof));
        }
        // Control: the same hand construction with the real serial in ζ is accepted.
        let zeta = delta * fx.private[0];
        b[ZETA..ZETA + 48].copy_from_slice(&zeta.to_affine().to_compressed());
        let draft = Theta::from_bytes(&b).unwrap();
        let c = challenge_of(&fx.params, &fx.vk, &draft, &fx.public, CTX);
        b[Z_R..Z_R + 32].copy_from_slice(&(k[0] - c * r).to_bytes_le());
        b[Z..Z + 32].copy_from_slice(&(k[1] - c * fx.private[0]).to_bytes_le());
        b[Z + 32..Z + 64].copy_from_slice(&(k[2] - c * fx.private[1]).to_bytes_le());
        verify(&fx, &Theta::from_bytes(&b).unwrap()).unwrap();
    }

    /// Class 2: two individually invalid signatures whose pairing errors cancel pass an unweighted
    /// product check; the weighted batch refuses them and bisection names both.
    #[test]
    fn cancelling_pair_is_refused_by_weighted_batch() {
        let fx = fixture();
        let d = G1Projective::random(&mut OsRng);
        let (h1, s1, r1) = randomise(&fx.sig);
        let (h2, s2, r2) = randomise(&fx.sig);
        let s1 = (G1Projective::from(s1) + d).to_affine();
        let s2 = (G1Projective::from(s2) - d).to_affine();
        let t1 = prove_randomised(
            &fx.params,
            &fx.vk,
            &h1,
            &s1,
            &r1,
            &fx.private,
            &fx.public,
            CTX,
            &mut OsRng,
        )
        .unwrap();
        let t2 = prove_randomised(
            &fx.params,
            &fx.vk,
            &h2,
            &s2,
            &r2,
            &fx.private,
            &fx.public,
            CTX,
            &mut OsRng,
        )
        .unwrap();

        // The coefficient-free check e(h1,κ1)·e(h2,κ2) = e(s1+s2, g2) holds: the errors cancel.
        let kappa = |t: &Theta| {
            G2Affine::from_compressed(t.to_bytes()[KAPPA..KAPPA + 96].try_into().unwrap()).unwrap()
        };
        let lhs = e(&h1, &kappa(&t1)) + e(&h2, &kappa(&t2));
        let rhs = e(
            &(G1Projective::from(s1) + G1Projective::from(s2)).to_affine(),
            &G2Affine::generator(),
        );
        assert_eq!(lhs, rhs, "the unweighted batch would accept this pair");

        assert_eq!(verify(&fx, &t1), Err(CoconutError::Signature));
        assert_eq!(verify(&fx, &t2), Err(CoconutError::Signature));
        let items = [
            ShowItem {
                theta: &t1,
                public: &fx.public,
                context: CTX,
            },
            ShowItem {
                theta: &t2,
                public: &fx.public,
                context: CTX,
            },
        ];
        assert_eq!(
            verify_batch(&fx.params, &fx.vk, &items),
            Err(CoconutError::Signature)
        );
        assert_eq!(find_invalid(&fx.params, &fx.vk, &items), vec![0, 1]);
    }

    /// Class 3: a signature at the point at infinity makes both pairing terms vanish.
    #[test]
    fn identity_signature_is_refused() {
        let fx = fixture();
        let o = G1Affine::identity();
        let r = Scalar::random(&mut OsRng);
        let theta = prove_with_signature(&fx, &o, &o, &r);
        assert_eq!(verify(&fx, &theta), Err(CoconutError::Signature));
        let batch = [ShowItem {
            theta: &theta,
            public: &fx.public,
            context: CTX,
        }];
        assert!(verify_batch(&fx.params, &fx.vk, &batch).is_err());
        // On the wire the identity never decodes.
        let honest = prove_honest(&fx);
        let inf = o.to_compressed();
        for at in [H, S, ZETA, T_ZETA] {
            assert_eq!(
                Theta::from_bytes(&patch(&honest, at, &inf)).err(),
                Some(CoconutError::Decoding)
            );
        }
        let inf2 = G2Affine::identity().to_compressed();
        for at in [KAPPA, T_KAPPA] {
            assert_eq!(
                Theta::from_bytes(&patch(&honest, at, &inf2)).err(),
                Some(CoconutError::Decoding)
            );
        }
        let mut sig = [0u8; 96];
        sig[..48].copy_from_slice(&inf);
        sig[48..].copy_from_slice(&inf);
        assert!(Signature::from_bytes(&sig).is_err());
        assert!(BlindedSignature::from_bytes(&sig).is_err());
    }

    /// Class 4: proof commitments or responses outside the challenge. A prover that solves for T_ζ
    /// after seeing the challenge (possible only if T_ζ were not hashed) is refused, and so is a
    /// presentation with a response left out.
    #[test]
    fn responses_outside_the_challenge_are_refused() {
        let fx = fixture();
        let honest = prove_honest(&fx);
        // Replace ζ by a tag for an arbitrary serial, then solve T_ζ = z_0·δ + c·ζ'.
        let delta = G1Projective::from(fx.params.tag_base());
        let zeta = (delta * Scalar::random(&mut OsRng)).to_affine();
        let b = patch(&honest, ZETA, &zeta.to_compressed());
        let draft = Theta::from_bytes(&b).unwrap();
        let c = challenge_of(&fx.params, &fx.vk, &draft, &fx.public, CTX);
        let z0 = Scalar::from_bytes_le(b[Z..Z + 32].try_into().unwrap()).unwrap();
        let t_zeta = (delta * z0 + G1Projective::from(zeta) * c).to_affine();
        let forged = Theta::from_bytes(&patch(&draft, T_ZETA, &t_zeta.to_compressed())).unwrap();
        assert_eq!(verify(&fx, &forged), Err(CoconutError::Proof));

        // Drop the binding-secret response: one hidden attribute fewer than the verifier expects.
        let mut short = honest.to_bytes();
        short[COUNT] = 1;
        short.truncate(Z + 32);
        let theta = Theta::from_bytes(&short).unwrap();
        assert_eq!(verify(&fx, &theta), Err(CoconutError::AttributeCount));
        let mut spend = vec![0u8; 12];
        spend.extend_from_slice(&short);
        assert!(BandwidthSpend::from_bytes(&spend).is_err());
        // And with the count left at 2 the bytes are simply too short.
        let mut cut = honest.to_bytes();
        cut.truncate(cut.len() - 32);
        assert_eq!(Theta::from_bytes(&cut).err(), Some(CoconutError::Decoding));
        // Tampering with any response is caught.
        let mut b = honest.to_bytes();
        b[Z + 40] ^= 1;
        if let Ok(t) = Theta::from_bytes(&b) {
            assert_eq!(verify(&fx, &t), Err(CoconutError::Proof));
        }
    }

    /// Class 5: an extra hidden attribute. A 5-beta key for 4-attribute parameters is refused, and a
    /// presentation hiding the bandwidth (3 hidden attributes) is refused where 2 public are due.
    #[test]
    fn extra_hidden_attribute_is_refused() {
        let fx = fixture();
        let params5 = Parameters::new(5).unwrap();
        let keys5 = ttp_keygen(&params5, 1, 1, &mut OsRng).unwrap();
        let vk5 = &keys5[0].verification;
        vk5.check(&params5).unwrap();
        assert_eq!(vk5.check(&fx.params), Err(CoconutError::VerificationKey));
        let honest = prove_honest(&fx);
        assert_eq!(
            verify_credential(&fx.params, vk5, &honest, &fx.public, CTX),
            Err(CoconutError::VerificationKey)
        );
        // A key whose G1 and G2 halves disagree is refused too.
        let mut b = fx.vk.to_bytes();
        let other = G1Affine::generator().to_compressed();
        b[97..97 + 48].copy_from_slice(&other);
        assert_eq!(
            VerificationKey::from_bytes(&b).unwrap().check(&fx.params),
            Err(CoconutError::VerificationKey)
        );

        // Hide the bandwidth attribute too: private [serial, binding, bandwidth], public [expiry].
        let hidden = [fx.private[0], fx.private[1], fx.public[0]];
        let theta = prove_credential(
            &fx.params,
            &fx.vk,
            &fx.sig,
            &hidden,
            &fx.public[1..],
            CTX,
            &mut OsRng,
        )
        .unwrap();
        // It is a valid show of "some bandwidth"; a verifier that asks for a fixed one refuses it.
        verify_credential(&fx.params, &fx.vk, &theta, &fx.public[1..], CTX).unwrap();
        let claim = public_attributes(BW * 100, EXPIRY);
        assert_eq!(verify(&fx, &theta), Err(CoconutError::AttributeCount));
        assert_eq!(
            verify_credential(&fx.params, &fx.vk, &theta, &claim, CTX),
            Err(CoconutError::AttributeCount)
        );
        let spend = BandwidthSpend::from_parts(theta.clone(), BW * 100, EXPIRY);
        assert!(BandwidthSpend::from_bytes(&spend.to_bytes()).is_err());
        let mut store = MemorySpentTags::default();
        let r = verify_spends(&fx.params, &fx.vk, &[(&spend, CTX)], EXPIRY, &mut store);
        assert_eq!(r, vec![Err(CoconutError::AttributeCount)]);
    }

    /// Checked decoding: wrong lengths, trailing bytes, non-canonical scalars and points, points off
    /// the subgroup.
    #[test]
    fn malformed_encodings_are_refused() {
        let fx = fixture();
        let honest = prove_honest(&fx);
        let bytes = honest.to_bytes();
        let mut long = bytes.clone();
        long.push(0);
        assert!(Theta::from_bytes(&long).is_err());
        assert!(Theta::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert!(Theta::from_bytes(&[]).is_err());
        // Scalar ≥ r (all ones) and scalar = r + z (non-canonical).
        assert!(Theta::from_bytes(&patch(&honest, Z_R, &[0xff; 32])).is_err());
        let modulus_le: [u8; 32] = {
            let mut m = (-Scalar::ONE).to_bytes_le();
            // r − 1 + 1 = r, little-endian add one to the low byte (r − 1 ends in 0x00 here).
            m[0] = m[0].wrapping_add(1);
            m
        };
        assert!(bool::from(Scalar::from_bytes_le(&modulus_le).is_none()));
        assert!(Theta::from_bytes(&patch(&honest, Z_R, &modulus_le)).is_err());
        // x coordinate ≥ p with the compression flag: not canonical.
        let mut bad_x = [0xffu8; 48];
        bad_x[0] = 0x9f;
        assert!(Theta::from_bytes(&patch(&honest, H, &bad_x)).is_err());
        // Missing compression flag (an uncompressed-form header in a compressed slot).
        let mut no_flag = G1Affine::generator().to_compressed();
        no_flag[0] &= 0x7f;
        assert!(Theta::from_bytes(&patch(&honest, H, &no_flag)).is_err());
        // A point on the curve but outside the prime-order subgroup.
        let mut x = 1u8;
        let off_subgroup = loop {
            let mut c = [0u8; 48];
            c[0] = 0x80;
            c[47] = x;
            let on_curve: Option<G1Affine> = G1Affine::from_compressed_unchecked(&c).into();
            if on_curve.is_some() && bool::from(G1Affine::from_compressed(&c).is_none()) {
                break c;
            }
            x += 1;
        };
        assert!(Theta::from_bytes(&patch(&honest, S, &off_subgroup)).is_err());
        let mut sig = [0u8; 96];
        sig[..48].copy_from_slice(&off_subgroup);
        sig[48..].copy_from_slice(&G1Affine::generator().to_compressed());
        assert!(Signature::from_bytes(&sig).is_err());
        // Keys, requests, shares.
        let vkb = fx.vk.to_bytes();
        assert!(VerificationKey::from_bytes(&vkb[..vkb.len() - 1]).is_err());
        let mut count = vkb.clone();
        count[96] = 200;
        assert!(VerificationKey::from_bytes(&count).is_err());
        let (_, req) =
            prepare_blind_sign(&fx.params, &fx.vk, &fx.private, &fx.public, &mut OsRng).unwrap();
        let rb = req.to_bytes();
        assert_eq!(BlindSignRequest::from_bytes(&rb).unwrap(), req);
        assert!(BlindSignRequest::from_bytes(&rb[..rb.len() - 32]).is_err());
        let mut extra = rb.clone();
        extra.extend_from_slice(&[0u8; 32]);
        assert!(BlindSignRequest::from_bytes(&extra).is_err());
        let share = PartialSignature {
            index: 0,
            signature: fx.sig,
        };
        assert!(PartialSignature::from_bytes(&share.to_bytes()).is_err());
        let share = PartialSignature {
            index: 3,
            signature: fx.sig,
        };
        assert_eq!(
            PartialSignature::from_bytes(&share.to_bytes()).unwrap(),
            share
        );
    }
}
