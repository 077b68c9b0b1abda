"""Per-sample read QC: counts, GC and quality, top k-mers, and the share of reads from a reference.

Run by reflowes once per row of samples.csv; main only builds the graph of shell steps.
Every step needs only a POSIX shell, coreutils and awk (no image: local processes).
"""

from __future__ import annotations

import reflowes as rf

# Sorting and awk's character classes must not depend on the user's locale.
ENV = {"LC_ALL": "C"}

# Mean length, GC % and mean Phred quality of all reads of the sample (both mates).
STATS = r"""awk '
BEGIN {{ for (i = 33; i < 127; i++) ord[sprintf("%c", i)] = i - 33 }}
FNR % 4 == 2 {{ n++; bases += length($0); gc += gsub(/[GCgc]/, "") }}
FNR % 4 == 0 {{ for (i = 1; i <= length($0); i++) q += ord[substr($0, i, 1)] }}
END {{
  printf "reads\t%d\nbases\t%d\n", n, bases
  printf "mean_length\t%.1f\n", n ? bases / n : 0
  printf "gc_percent\t%.2f\n", bases ? 100 * gc / bases : 0
  printf "mean_quality\t%.2f\n", bases ? q / bases : 0
}}' {r1} {r2} > {out}"""

# The most frequent k-mers over both mates, as "kmer<TAB>count".
KMERS = r"""awk -v k={k} 'FNR % 4 == 2 {{
  for (i = 1; i + k - 1 <= length($0); i++) print substr($0, i, k)
}}' {r1} {r2} | sort | uniq -c | sort -k1,1nr -k2,2 | head -n {top} \
  | awk '{{ print $2 "\t" $1 }}' > {out}"""

# Every k-mer of the reference and of its reverse complement, sorted and unique.
# Shared by all samples: same command, same reference digest, same k -> one cache key.
REF_INDEX = r"""awk -v k={k} '
/^>/ {{ next }}
{{ seq = seq toupper($0) }}
END {{
  n = length(seq)
  rc = ""
  for (i = n; i >= 1; i--) {{
    b = substr(seq, i, 1)
    rc = rc (b == "A" ? "T" : b == "C" ? "G" : b == "G" ? "C" : b == "T" ? "A" : "N")
  }}
  for (i = 1; i + k - 1 <= n; i++) {{ print substr(seq, i, k); print substr(rc, i, k) }}
}}' {ref} | sort -u > {out}"""

# How many reads share at least one k-mer with the reference.
REF_HITS = r"""awk -v k={k} '
NR == FNR {{ index_[$1] = 1; next }}
FNR % 4 == 2 {{
  n++
  for (i = 1; i + k - 1 <= length($0); i++) if (substr($0, i, k) in index_) {{ hits++; break }}
}}
END {{ printf "ref_reads\t%d\nref_percent\t%.2f\n", hits, n ? 100 * hits / n : 0 }}
' {index} {r1} {r2} > {out}"""

# A per-sample report directory: summary.tsv (all figures) and top_kmers.tsv.
REPORT = r"""mkdir -p {report} \
  && {{ printf 'sample\t%s\n' {sample}; cat {stats} {hits}; \
        printf 'top_kmers\t%s\n' "$(head -n 3 {kmers} | cut -f1 | paste -sd, -)"; }} \
     > {report}/summary.tsv \
  && cp {kmers} {report}/top_kmers.tsv"""


def main(sample: str, fastq_1: str, fastq_2: str, top: int = 10, k: int = 8,
         ref: str = "data/ref.fa"):
    r1, r2 = rf.file(fastq_1), rf.file(fastq_2)
    small = {"cpu": 1, "mem": "64MiB", "env": ENV}

    stats = rf.exec(STATS, inputs={"r1": r1, "r2": r2}, outputs={"out": rf.FILE},
                    name="stats", **small)
    kmers = rf.exec(KMERS, inputs={"r1": r1, "r2": r2, "k": k, "top": top},
                    outputs={"out": rf.FILE}, name="kmers", **small)
    index = rf.exec(REF_INDEX, inputs={"ref": rf.file(ref), "k": 2 * k},
                    outputs={"out": rf.FILE}, name="ref_index", **small)
    hits = rf.exec(REF_HITS, inputs={"index": index["out"], "r1": r1, "r2": r2, "k": 2 * k},
                   outputs={"out": rf.FILE}, name="ref_hits", **small)
    report = rf.exec(
        REPORT,
        inputs={"sample": sample, "stats": stats["out"], "hits": hits["out"],
                "kmers": kmers["out"]},
        outputs={"report": rf.DIR}, name="report", **small,
    )
    return {"stats": stats["out"], "kmers": kmers["out"], "ref_hits": hits["out"],
            "report": report["report"]}
