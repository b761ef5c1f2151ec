"""Data in: the labelled images a model learns from, as one YOLO dataset.

Entry point: `training.data.dataset_build.build(BuildOptions)` (`gridwatch dataset build`), which
reads the sources and writes the dataset with its manifest. Around it:

    sources           where each dataset is, its licence and class mapping (`Source`)
    importers         the annotation formats a source may be in (YOLO, COCO, VOC, Label Studio, CVAT)
    dataset_import    a labelling tool's export -> a source definition (`gridwatch dataset import`)
    dataset_build     validate, merge, split (by image or place), write; `build` is the stage's entry
    dataset_manifest  what a build holds, as a typed record (`DatasetManifest`)
    pseudo_labels     COCO-teacher boxes for the context classes
    synthetic         flyer and banner composites
    crops             native-resolution train crops of small things
    places            which images show the same place (split and folds by place)
    pack              a build re-encoded at the training size for a training machine
    yolo_format       YOLO label files and data.yaml

Submodules import only what they use: importing this package loads nothing heavy.
"""
