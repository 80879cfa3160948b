"""Summary figures of a cohort, as `pocketrec data stats` prints them."""

from __future__ import annotations

from collections import Counter

from distill.data.records import Cohort
from distill.data.samples import PROTOCOLS, build_samples, usable
from distill.data.vocab import Vocab


def cohort_stats(cohort: Cohort, top_unmapped: int = 10) -> dict:
    visits = cohort.visits
    per_patient = Counter(v.patient_id for v in visits)
    used = [v for v in visits if usable(v)]
    used_per_patient = Counter(v.patient_id for v in used)
    rep = cohort.report
    return {
        "source": rep.source,
        "patients": len(per_patient),
        "visits": len(visits),
        "multi_visit_patients": sum(1 for n in per_patient.values() if n >= 2),
        # vocabulary sizes: distinct codes, without <pad> and <unk>
        "diagnoses": len(Vocab.build(c for v in visits for c in v.diagnoses)) - 2,
        "procedures": len(Vocab.build(c for v in visits for c in v.procedures)) - 2,
        "medications": len(Vocab.build(c for v in visits for c in v.medications)) - 2,
        "medication_rows": rep.medication_rows,
        "unmapped_medication_rows": rep.unmapped_medication_rows,
        "mapped_share": round(rep.mapped_share, 4),
        "top_unmapped_drugs": dict(rep.unmapped_examples.most_common(top_unmapped)),
        "usable_visits": len(used),
        "usable_patients": len(used_per_patient),
        "usable_multi_visit_patients": sum(1 for n in used_per_patient.values() if n >= 2),
        "samples": {p: len(build_samples(cohort, p)) for p in PROTOCOLS},
        "avg_diagnoses_per_visit": round(sum(len(v.diagnoses) for v in visits) / len(visits), 2),
        "avg_medications_per_usable_visit": round(
            sum(len(v.medications) for v in used) / max(len(used), 1), 2
        ),
        "rows_read": dict(rep.rows),
        "skipped_rows": {k: n for k, n in rep.skipped.items() if n},
    }
