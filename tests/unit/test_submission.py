"""submission_rows: one distinct image_name per image, as the organisers' format needs."""

import csv

from pipeline.evaluate.submission import COLUMNS, submission_rows, write_submission


def test_same_file_name_in_two_subfolders_gives_two_names(tmp_path):
    paths = [tmp_path / "lot1" / "img_001.png", tmp_path / "lot2" / "deep" / "img_001.png",
             tmp_path / "img_002.png"]
    rows = submission_rows(tmp_path, paths, ["Bridge", "Clean", "CMP"])
    assert rows == [
        {"image_name": "lot1/img_001.png", "predicted_class": "Bridge"},
        {"image_name": "lot2/deep/img_001.png", "predicted_class": "Clean"},
        {"image_name": "img_002.png", "predicted_class": "CMP"},
    ]


def test_single_image_path_gives_its_own_name(tmp_path):
    image = tmp_path / "lot1" / "img_001.png"
    assert submission_rows(image, [image], ["VIA"]) == [
        {"image_name": "img_001.png", "predicted_class": "VIA"}]


def test_relative_folder_and_paths_give_the_same_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = submission_rows("unlabelled", ["unlabelled/a/x.png", tmp_path / "unlabelled/b/x.png"],
                           ["Bridge", "Clean"])
    assert [r["image_name"] for r in rows] == ["a/x.png", "b/x.png"]


def test_written_file_has_the_organisers_columns(tmp_path):
    out = write_submission(tmp_path / "submission.csv",
                           [{"image_name": "a/x.png", "predicted_class": "Bridge"}])
    with open(out, newline="", encoding="utf-8") as fh:
        assert list(csv.reader(fh)) == [COLUMNS, ["a/x.png", "Bridge"]]
