"""Deviations from the paper, read from what the runs record."""

from __future__ import annotations

from thyroaug.evaluation.deviations import RunFacts, find_deviations


def test_find_deviations_reads_what_runs_record() -> None:
    quick = {"pretrained": "False", "image_size": "64", "epochs": "8", "bootstrap": "200"}
    classifier = {
        "O": RunFacts(params={**quick, "per_class_synthetic": "100", "seed": "0"}),
        "O+FM": RunFacts(params={**quick, "per_class_synthetic": "100", "seed": "0"}),
    }
    generators = {
        "train_sd": RunFacts(tags={"source": "scratch"}),
        "train_fm": RunFacts(params={"epochs": "20"}),
    }
    synth = {"FM": RunFacts(metrics={"fid_resnet18-random_overall": 3.0})}
    dev = find_deviations(classifier, generators, synth)
    assert dev["classifier_init"] == "ResNet18 from random init, not ImageNet (all scenarios)"
    assert dev["image_size"] == "classifier input 64 px, paper 128 px"
    assert dev["epochs"] == "classifier trained 8 epochs, paper 300"
    assert "100" in dev["per_class_synthetic"] and "200" in dev["bootstrap"]
    assert "SD v1.4" in dev["sd_source"] and "20 epochs" in dev["fm_epochs"]
    assert "resnet18-random" in dev["fidelity_no_inception"]
    assert set(dev) >= {"single_seed", "statistics"}

    paper = {"pretrained": "True", "image_size": "128", "epochs": "300", "bootstrap": "1000"}
    faithful = {
        "O": RunFacts(params={**paper, "per_class_synthetic": "1000", "seed": "0"}),
        "O+FM": RunFacts(params={**paper, "per_class_synthetic": "1000", "seed": "1"}),
    }
    synth = {"FM": RunFacts(metrics={"fid_inception_overall": 3.0})}
    generators = {"train_sd": RunFacts(tags={"source": "finetune"})}
    assert find_deviations(faithful, generators, synth, paired_statistics=False) == {}
