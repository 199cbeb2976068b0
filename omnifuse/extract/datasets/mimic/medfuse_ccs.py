"""MedFuse's ICD-10-CM codes of the 25 benchmark phenotype groups (data for ``--phenotype-map medfuse``).

Source: nyuad-cai/MedFuse, ``mimic4extract/mimic3benchmark/resources/icd_9_10_definitions_2.yaml`` (commit
3f8b54e; the ``mimic4extract`` folder carries YerevaNN's MIT licence, Copyright (c) 2017 YerevaNN): for each
group with ``use_in_benchmark: true``, the codes that are not in mimic3-benchmarks' ICD-9-CM list of that group
(``hcup_ccs_2015_definitions.yaml``), in the yaml's order, repeats removed. They are all ICD-10-CM codes without
dots, none of them an ICD-9-CM code of the benchmark's yaml, and no code lies in two groups. The yaml's ICD-9-CM
lists of these groups equal the benchmark's (``ccs.load_ccs_table``). Regenerate with
``ccs.build_medfuse_icd10(medfuse_yaml, benchmark_yaml)``.
"""

from __future__ import annotations

MEDFUSE_ICD10: dict[str, str] = {
    "Acute and unspecified renal failure": ("N170 N171 N172 N178 N179 N19"),
    "Acute cerebrovascular disease": (
        "G43609 G43619 G43601 G43611 I609 I619 I621 I6200 I629 I6322 I63239 I63219 I6359 I6320 I6629 "
        "I6330 I669 I6340 I6350 I6789"
    ),
    "Acute myocardial infarction": ("I2109 I2119 I2111 I2129 I214 I21A9"),
    "Cardiac dysrhythmias": ("I471 I472 I479 I4891 I4892 I4940 I491 I4949 R001 I499 R000 R002"),
    "Chronic kidney disease": ("N181 N182 N183 N184 N185 N186 N189 R880 Z940 Z992 Z9115 Z4931 Z4901 Z4902 Z4932"),
    "Chronic obstructive pulmonary disease and bronchiectasis": (
        "J40 J410 J411 J449 J441 J440 J418 J42 J439 J479 J471"
    ),
    "Complications of surgical procedures or medical care": (
        "E8771 E7143 E883 D6481 D6951 G971 G9782 G9741 T82818A I97190 I953 I9581 J95811 J95812 J9584 "
        "J9500 J9502 J9503 J9509 K9432 K9433 K9420 K9422 K9423 K9429 K9501 K9509 K9581 K9589 K911 K910 "
        "K9189 K9413 K91850 K91858 K912 N99511 R5082 R5083 R5084 T889XXS T8852XA T882XXA T883XXA G9781 "
        "I97821 I9789 T8172XA J95851 J9589 K9186 N9989 T879 T8730 T8740 T8789 T81710A T81711A I973 M9689 "
        "T8110XA T8111XA T8112XA T8119XA N99821 N99841 T888XXA T8130XA T8132XA T8131XA T8133XA T81539A "
        "T814XXA T8183XA T8169XA T8182XA H59029 T8189XA T819XXA T881XXA T800XXA T801XXA T8022XA T880XXA "
        "T8051XA T8052XA T8059XA T8061XA T8062XA T8069XA T8030XA T80319A T80310A T80311A T8039XA T8040XA "
        "T80419A T80410A T80411A T8049XA T80A0XA T80A19A T80A10A T80A11A T80A9XA T8092XA T80810A T80818A "
        "T80919A T80910A T80911A T8090XA T8089XA T889XXA Z87821 Z9283 Z283 Z1801 Z1809"
    ),
    "Conduction disorders": (
        "I442 I4430 I440 I441 I4469 I447 I4510 I454 I452 I453 I455 I456 I4581 I4589 I459 Z959 Z950 Z95810 "
        "Z95818 Z45018 Z4502 Z4509"
    ),
    "Congestive heart failure; nonhypertensive": (
        "I0981 I509 I501 I5020 I5021 I5022 I5023 I5030 I5031 I5032 I5033 I5040 I5041 I5042 I5043"
    ),
    "Coronary atherosclerosis and other heart disease": (
        "I241 I200 I240 I248 I252 I208 I201 I209 I2510 I25811 I2582 I2583 I2584 I259 Z951 Z9861"
    ),
    "Diabetes mellitus with complications": (
        "E0965 E1310 E0910 E1300 E0901 E13641 E0921 E1339 E0939 E1349 E0940 E1359 E0951 E1369 E0969 E138 "
        "E098 E1165 E1065 E1010 E1101 E1069 E11641 E10641 E1129 E1029 E1139 E1039 E1140 E1040 E1151 E1051 "
        "E1169 E118 E108"
    ),
    "Diabetes mellitus without complication": ("E139 E119 E109 R7301 R7302 R7309 R81 R824 Z9641 Z4681"),
    "Disorders of lipid metabolism": ("E7801 E781 E782 E783 E785"),
    "Essential hypertension": ("I10 I169"),
    "Fluid and electrolyte disorders": ("E870 E871 E872 E873 E874 E869 E860 E861 E8779 E875 E876 E878 T783XXA"),
    "Gastrointestinal hemorrhage": (
        "I8501 I8511 K226 K228 K250 K56699 K252 K254 K256 K260 K262 K264 K266 K270 K272 K274 K276 K280 "
        "K282 K284 K286 K625 K920 K921 K922"
    ),
    "Hypertension with complications and secondary hypertension": (
        "I119 I110 I129 I120 I1310 I130 I1311 I132 I150 I158 I674"
    ),
    "Other liver diseases": (
        "K762 K7469 K745 K7689 K769 K750 K751 K7291 K766 K767 K7290 K761 K763 K7681 R17 R160 R188 R740 R748 R945 Z944"
    ),
    "Other lower respiratory disease": (
        "J853 J811 J8489 J8401 J8403 J8402 J84111 J84112 J84113 J84114 J84115 J842 J84116 J84117 J8481 "
        "J8482 J84841 J84842 J8483 J84843 J84848 J8409 J849 M3481 J99 J82 J810 J984 J986 J988 J989 R230 "
        "R069 R064 R0601 R0681 R063 R0602 R0682 R062 R0689 R05 R049 R0481 R0489 R093 R0781 R222 R0989 "
        "R066 R911 R918 R942 Z8709 Z8701 Z942"
    ),
    "Other upper respiratory disease": (
        "J342 J330 J331 J338 J339 J310 J312 J311 J370 J371 J301 J3081 J3089 J309 J343 J3481 J3489 J392 "
        "J391 J390 J3800 J3801 J3802 J381 J383 J384 J387 J386 J385 J393 J399 J9801 J9809 J9851 J9859 R070 "
        "R499 R491 R490 R4921 R4922 R498 R040 R041 R196 R061 R4789 Z930 Z430"
    ),
    "Pleurisy; pneumothorax; pulmonary collapse": (
        "J860 J869 R091 J942 J948 J918 J930 J9311 J9312 J9381 J9382 J939 J9819 J982 J983"
    ),
    "Pneumonia (except that caused by tuberculosis or sexually transmitted disease)": (
        "A0222 A202 A212 A221 A310 A420 B012 B052 J17 A78 B371 B380 B381 B382 B392 B583 B59 J120 J121 "
        "J122 J1281 J1289 J129 J181 J150 J151 J14 J154 J153 J1520 J15211 J15212 J1529 J158 J155 J156 A481 "
        "J159 J157 J160 J168 B250 A3791 B440 J180 J189 J852"
    ),
    "Respiratory failure; insufficiency; arrest (adult)": (
        "J9600 J953 J9620 J9690 R0603 J9610 R092 Z9911 Z9912 J95850 Z9981"
    ),
    "Septicemia (except in labor)": (
        "A021 A207 A227 A394 A409 A412 A4101 A4102 A411 A403 A414 A4150 A413 A4151 A4152 A4153 A4159 "
        "A4189 A419 B007 I76 P369 R7881 R6520"
    ),
    "Shock": ("R579 R570 R6521 R578"),
}
"""Group -> its MedFuse ICD-10-CM codes, separated by spaces (570 codes in all)."""
