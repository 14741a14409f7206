"""Readers for the IU X-ray collection (Open-i / NLMCXR) in its three public layouts.

Plain Python, no Django: every reader yields :class:`StudyRecord`, :class:`ImageItem`
or :class:`ItemError` values, so one bad file becomes one error and the rest goes on.

Layouts
- Open-i: ``NLMCXR_reports.tgz`` (``ecgen-radiology/<n>.xml``) and ``NLMCXR_png.tgz``
  (``CXR<n>_IM-....png``), as archives or extracted folders (:mod:`.openi`).
- Kaggle: ``indiana_reports.csv``, ``indiana_projections.csv``, ``images_normalized/``
  (:mod:`.kaggle`).
- R2Gen: ``annotation.json`` and ``images/<study id>/<k>.png`` (:mod:`.r2gen`).

Identifiers. Every layout is normalised to Open-i's study uid ``CXR<n>`` (Kaggle's
uid ``1000`` is ``CXR1000``; R2Gen's ``CXR2384_IM-0942`` is study ``CXR2384``), so one
study imported from two layouts is one case. Image ids are normalised to the DICOM
metadata's ``CXR<n>_IM-<a>-<b>`` (Open-i's two ``CXR1_1_IM-...`` names lose the
``_1``; Kaggle's ``1000_IM-0003-1001.dcm.png`` gains ``CXR`` and loses ``.dcm``).
R2Gen names images only by position, so its ids are ``<study id>_<k>``.

XXXX placeholders. The collection replaces de-identified words with ``XXXX``. The
stored report fields keep them verbatim, so every field can be traced to its source.
The prompt drops every word that contains ``XXXX`` (``"Normal chest x-XXXX."`` becomes
``"Normal chest."``): the placeholder is not anatomy, and as CLIP tokens it would only
spend the 75-token budget on noise. :func:`.text.prompt_source` implements the rule.
"""
