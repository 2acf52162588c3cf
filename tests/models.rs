//! The networks' structure, checked without a GPU: parameter counts equal PyTorch's.

use kdna::models::{Arch, ModelSpec, build, macs_per_image, parameter_count};

fn params(arch: Arch, kdna: bool) -> usize {
    let net = build(ModelSpec { arch, kdna, classes: 1000, drop_path: 0.0 }, 2, 64, 0.0).unwrap();
    parameter_count(&net.graph)
}

#[test]
fn parameter_counts_match_pytorch() {
    // sum(p.numel() for p in model.parameters()) of torchvision and the KernelDNA reference.
    let want = [
        (Arch::ResNet18, 11_689_512, 9_240_798),
        (Arch::ResNet50, 25_557_032, 22_778_060),
        (Arch::MobileNetV2, 3_504_872, 3_136_840),
        (Arch::MobileNetV2Half, 1_968_680, 1_878_232),
        (Arch::ConvNeXtTiny, 28_589_128, 21_339_592),
    ];
    for (arch, baseline, kdna) in want {
        assert_eq!(params(arch, false), baseline, "{arch} baseline");
        assert_eq!(params(arch, true), kdna, "{arch} KernelDNA");
    }
}

#[test]
fn architecture_names_parse() {
    for arch in Arch::ALL {
        assert_eq!(arch.name().parse::<Arch>().unwrap(), arch);
    }
    assert_eq!("convNeXt-tiny".parse::<Arch>().unwrap(), Arch::ConvNeXtTiny, "the seed's spelling");
    let err = "resnet19".parse::<Arch>().unwrap_err().to_string();
    assert!(err.contains("resnet18") && err.contains("mobilenet_v2_1d2"), "{err}");
}

#[test]
fn multiply_accumulates_match_pytorch_at_224() {
    // torchvision's model table (and the same count for the KernelDNA reference), in GMACs.
    let want = [
        (Arch::ResNet18, 1.814, 2.277),
        (Arch::ResNet50, 4.089, 4.308),
        (Arch::MobileNetV2, 0.301, 0.301),
        (Arch::ConvNeXtTiny, 4.456, 4.458),
    ];
    for (arch, baseline, kdna) in want {
        for (kdna_net, g) in [(false, baseline), (true, kdna)] {
            let net = build(ModelSpec { arch, kdna: kdna_net, classes: 1000, drop_path: 0.0 }, 1, 224, 0.0).unwrap();
            let got = macs_per_image(&net) as f64 / 1e9;
            assert!((got / g - 1.0).abs() < 0.005, "{arch} kdna={kdna_net}: {got:.4} GMACs, PyTorch counts {g}");
        }
    }
}
