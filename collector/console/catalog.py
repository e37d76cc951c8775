"""The console's message catalog: every text on screen in English and Simplified Chinese.

Pure. :func:`text` looks up an interface string; :func:`reason_sentence` turns a stored risk
reason (code + evidence, see docs/risk.md) into one plain-language sentence in the reader's
language, with the figures it rests on. Readers who may not see locations (the collections
role) get the sentence without the place name (``show_places=False``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..timefmt import format_time

__all__ = [
    "LOCALES",
    "contribution_text",
    "evidence_items",
    "level_name",
    "reason_sentence",
    "step_name",
    "text",
    "tier_name",
]

LOCALES = ("en", "zh-CN")

_UI: dict[str, tuple[str, str]] = {
    "app": ("LienWatch console", "LienWatch 风控台"),
    "sign_in": ("Sign in", "登录"),
    "sign_out": ("Sign out", "退出"),
    "username": ("User name", "用户名"),
    "password": ("Password", "密码"),
    "or_api_key": ("or an API key", "或使用 API 密钥"),
    "api_key": ("API key", "API 密钥"),
    "bad_sign_in": ("Wrong user name, password or key.", "用户名、密码或密钥不正确。"),
    "worklist": ("Worklist", "工作清单"),
    "alerts": ("Alerts", "告警"),
    "audit": ("Audit log", "审计日志"),
    "devices": ("Devices", "设备"),
    "places": ("Places", "重点场所"),
    "second_tracker": ("Second tracker", "第二定位终端"),
    "place_type": ("Type", "类型"),
    "place_id": ("Id", "编号"),
    "place_name": ("Name", "名称"),
    "all_types": ("All types", "全部类型"),
    "radius_m": ("Radius (m)", "半径（米）"),
    "datum": ("Datum", "坐标系"),
    "used_car_market": ("Used-car market", "二手车市场"),
    "pawn_lot": ("Pawn lot", "典当行停车场"),
    "auction": ("Auction", "拍卖场"),
    "impound_yard": ("Impound yard", "扣车场"),
    "port": ("Port", "港口"),
    "border_crossing": ("Border crossing", "边境口岸"),
    "loan": ("Loan", "贷款"),
    "level": ("Level", "风险等级"),
    "next_step": ("Next step", "下一步"),
    "reasons": ("Reasons", "原因"),
    "reason": ("Reason", "原因"),
    "search": ("Loan, VIN, device or borrower", "贷款号、车架号、设备或借款人"),
    "filter": ("Filter", "筛选"),
    "any": ("any", "全部"),
    "exposure": ("Overdue", "逾期金额"),
    "dpd": ("Days past due", "逾期天数"),
    "late_streak": ("Late in a row", "连续逾期期数"),
    "changed": ("Level since", "等级变更时间"),
    "device": ("Device", "设备"),
    "vin": ("VIN", "车架号"),
    "borrower": ("Borrower ref.", "借款人编号"),
    "previous": ("Previous", "上一页"),
    "next": ("Next", "下一页"),
    "page": ("Page", "第"),
    "export_csv": ("Export CSV", "导出 CSV"),
    "live": ("Live", "实时"),
    "live_changes": ("changes arrived live", "条实时变更"),
    "schedule": ("Repayment schedule", "还款计划"),
    "due_date": ("Due date", "应还日期"),
    "amount": ("Amount", "金额"),
    "covered_on": ("Paid in full on", "还清日期"),
    "late": ("Late", "逾期"),
    "yes": ("yes", "是"),
    "no": ("no", "否"),
    "payments": ("Payments received", "已收还款"),
    "payment_id": ("Payment", "还款编号"),
    "paid_on": ("Value date", "到账日期"),
    "timeline": ("Risk events", "风险事件"),
    "time": ("Time", "时间"),
    "from_to": ("From → to", "变化"),
    "rule": ("Rule", "规则"),
    "severity": ("Severity", "严重程度"),
    "state": ("State", "状态"),
    "evidence": ("Evidence", "证据"),
    "device_status": ("Device status", "设备状态"),
    "online": ("Online", "在线"),
    "offline": ("Offline", "离线"),
    "unknown": ("unknown", "未知"),
    "last_seen": ("Last seen", "最后通信"),
    "last_fix": ("Last position fix", "最后定位时间"),
    "track": ("Track", "轨迹"),
    "track_period": ("Period", "时间段"),
    "show": ("Show", "显示"),
    "stops": ("Stops", "停留点"),
    "duration": ("Duration", "时长"),
    "markets": ("Used-car markets", "二手车市场"),
    "export_geojson": ("GeoJSON", "GeoJSON"),
    "export_gpx": ("GPX", "GPX"),
    "no_points": ("No position in this period.", "该时间段内没有定位。"),
    "track_reason_needed": ("Say why you look at where this car has been: the reason is recorded with the read.",
                            "请说明查看该车行驶轨迹的原因：原因将与本次查看一起记录。"),
    "show_track": ("Show track", "显示轨迹"),
    "alerts_reason_needed": ("The evidence is shown without coordinates. Say why you need them: the reason is "
                             "recorded with the read, for every loan on the page.",
                             "证据中的坐标已隐去。如需查看，请说明原因：原因将与本次查看一起按每笔贷款记录。"),
    "show_coordinates": ("Show coordinates", "显示坐标"),
    "track_grant_needed": ("The track is shown only under an approved access request (approved by a risk analyst or "
                           "an admin who is not you) or an emergency access.",
                           "仅在访问申请获批准（由您以外的风险分析员或管理员批准）或紧急访问时显示轨迹。"),
    "request_access": ("Request access", "申请访问"),
    "minutes": ("Minutes", "分钟"),
    "pending_requests": ("Your pending requests", "您待批准的申请"),
    "emergency_access": ("Emergency access (theft signature open; reviewed later)",
                         "紧急访问（存在盗抢迹象；事后复核）"),
    "access_basis": ("Shown on the grounds of", "查看依据"),
    "access_refused": ("Not shown", "未显示"),
    "reversed": ("reversed", "已冲正"),
    "payments_total": ("Total received (reversed payments left out)", "合计（不含已冲正还款）"),
    "points": ("positions", "个定位点"),
    "truncated": ("(first 20,000 shown)", "（仅显示前 20,000 个）"),
    "facts": ("Repayment facts", "还款概况"),
    "principal": ("Principal", "本金"),
    "total_due": ("Due so far", "累计应还"),
    "total_paid": ("Paid", "已还"),
    "next_due": ("Next due", "下期应还"),
    "assess": ("Reassess now", "立即重新评估"),
    "language": ("Language", "语言"),
    "save": ("Save", "保存"),
    "actor": ("Who", "操作人"),
    "role": ("Role", "角色"),
    "action": ("Action", "操作"),
    "subject": ("Subject", "对象"),
    "detail": ("Detail", "详情"),
    "key_status": ("Key", "密钥"),
    "batches": ("Batches", "批次"),
    "duplicates": ("Duplicates", "重复"),
    "seq_gaps": ("Missing batches", "缺失批次"),
    "agent_version": ("Agent version", "终端版本"),
    "since": ("From", "起"),
    "until": ("To", "止"),
    "no_rows": ("Nothing matches.", "没有符合条件的记录。"),
    "times_in": ("Times are shown in the borrower's time zone, named after each time.",
                 "时间按借款人所在时区显示，并在每个时间后注明时区。"),
    "scale": ("Scale", "比例尺"),
    "forbidden": ("Your role may not see this page.", "您的角色无权查看此页面。"),
    "not_found": ("Not found.", "未找到。"),
    "signed_in_as": ("Signed in as", "当前用户"),
    "raised": ("raised", "触发"),
    "cleared": ("cleared", "解除"),
    "alert_positions": ("Alert positions", "告警位置"),
    "start": ("start", "起点"),
    "condition": ("Vehicle condition, last 30 days", "车况报告（近 30 天）"),
    "condition_link": ("Vehicle condition report", "车况报告"),
    "day": ("Day", "日期"),
    "distance_km": ("Distance (km)", "里程（公里）"),
    "driving_h": ("Driving (h)", "驾驶时长（小时）"),
    "harsh_accel": ("Harsh accelerations", "急加速"),
    "harsh_brake": ("Harsh brakings", "急刹车"),
    "odometer": ("Odometer", "总里程"),
    "soc": ("Battery (SoC %)", "电量（%）"),
    "volts": ("12 V battery (V)", "12 V 电瓶（伏）"),
    "battery_health": ("Traction battery", "动力电池"),
    "soh": ("State of health (%)", "健康度 SoH（%）"),
    "soh_change": ("SoH change in 30 days (points)", "30 天 SoH 变化（百分点）"),
    "hv_disconnects": ("High-voltage disconnects while parked", "驻车时高压断开次数"),
    "soh_drop_alerts": ("Abnormal SoH drops", "SoH 异常下降"),
    "energy_used": ("Energy used (kWh)", "耗电量（千瓦时）"),
    "energy_charged": ("Energy charged (kWh)", "充电量（千瓦时）"),
    "charging_sessions": ("Charging sessions", "充电次数"),
    "totals": ("30-day totals", "30 天合计"),
    "print": ("Print or save as PDF from the browser.", "可通过浏览器打印或另存为 PDF。"),
    "end": ("end", "终点"),
    # cases and contact rules (#16)
    "cases": ("Cases", "催收案件"),
    "case": ("Case", "案件"),
    "my_cases": ("Assigned to you", "分配给我的案件"),
    "unassigned_cases": ("Unassigned", "未分配的案件"),
    "other_cases": ("Assigned to others", "分配给他人的案件"),
    "assignee": ("Assignee", "负责人"),
    "sla_due": ("Due by (SLA)", "处理时限"),
    "next_action": ("Next action", "下一步行动"),
    "next_action_at": ("Next action at", "下一步行动时间"),
    "opened": ("Opened", "立案时间"),
    "escalations": ("Escalations", "升级次数"),
    "case_actions": ("Actions", "催收记录"),
    "case_events": ("History", "案件历史"),
    "record_action": ("Record an action", "记录催收行动"),
    "kind": ("Action", "行动"),
    "outcome": ("Outcome", "结果"),
    "note": ("Note", "备注"),
    "promise_date": ("Promised payment date", "承诺还款日期"),
    "promise_amount": ("Promised amount", "承诺还款金额"),
    "promise": ("Promise", "还款承诺"),
    "status": ("Status", "状态"),
    "contact_refused": ("Contact refused", "不允许联系"),
    "allowed_from": ("allowed from", "可联系时间"),
    "assign_to_me": ("Assign to me", "分配给我"),
    "close_case": ("Close the case", "结案"),
    "resolution": ("Resolution", "结案原因"),
    "none": ("none", "无"),
    "tier": ("Tier", "客户分层"),
    "region": ("Region", "地区"),
    "sort": ("Order by", "排序"),
    "sort_expected_loss": ("expected loss", "预期损失"),
    "sort_severity": ("level, then overdue", "风险等级、逾期金额"),
    "sort_score": ("score", "评分"),
    "sort_days_past_due": ("days past due", "逾期天数"),
    "expected_loss": ("Expected loss", "预期损失"),
    "score": ("Score", "评分"),
    "risk_score": ("Risk score", "风险评分"),
    "score_note": ("Probability of a bad outcome within 90 days (either axis); expected loss = outstanding x "
                   "(probability x loss given default on each axis). Model", "90 天内出现不良结果（任一维度）的概率；"
                   "预期损失 = 未偿本金 ×（各维度概率 × 违约损失率）。模型"),
    "axis": ("Axis", "维度"),
    "probability": ("Probability", "概率"),
    "contribution": ("Contribution", "贡献"),
    "outstanding": ("Outstanding", "未偿本金"),
    "monitoring": ("Monitoring", "监控策略"),
    "credit": ("Credit", "信用风险"),
    "collateral": ("Collateral", "抵押物风险"),
    "value": ("Value", "取值"),
    # user management (collector.console.user_pages)
    "users": ("Users", "用户"),
    "display_name": ("Display name", "显示名称"),
    "time_zone": ("Time zone", "时区"),
    "last_sign_in": ("Last sign-in", "最近登录"),
    "never": ("never", "从未"),
    "enabled": ("enabled", "已启用"),
    "disabled": ("disabled", "已停用"),
    "you": ("you", "本人"),
    "change_role": ("Change role", "更改角色"),
    "disable": ("Disable", "停用"),
    "enable": ("Enable", "启用"),
    "reset_password": ("Reset password", "重置密码"),
    "new_password": ("New password", "新密码"),
    "password_again": ("Password again", "再次输入密码"),
    "add_user": ("Add a user", "添加用户"),
    "add": ("Add", "添加"),
    "users_note": ("A role change, a disable and a password reset end the user's sessions. Passwords have at "
                   "least 10 characters; tell the user theirs in person. A disabled user, or one whose new role "
                   "holds no cases (risk_analyst, auditor), hands their open cases to the person you choose, or "
                   "back to the unassigned queue.",
                   "更改角色、停用和重置密码会结束该用户的所有会话。密码至少 10 个字符，请当面告知用户。"
                   "被停用的用户或新角色不负责案件（风险分析员、审计员）的用户，其未结案件将移交给您选择的人，"
                   "或退回未分配队列。"),
    "refused": ("Refused", "已拒绝"),
    "user_added": ("User added.", "用户已添加。"),
    "role_changed": ("Role changed; the user's sessions ended.", "角色已更改，该用户的会话已结束。"),
    "user_disabled": ("User disabled; their sessions ended.", "用户已停用，其会话已结束。"),
    "user_enabled": ("User enabled.", "用户已启用。"),
    "password_reset": ("Password reset; the user's sessions ended.", "密码已重置，该用户的会话已结束。"),
    "open_cases": ("Open cases", "未结案件"),
    "cases_go_to": ("Their open cases go to", "其未结案件转给"),
    "unassigned_queue": ("the unassigned queue", "未分配队列"),
    "cases_handed_over": ("Open cases handed over", "已移交的未结案件"),
    "returned_cases": ("These cases came back to the queue because their assignee was disabled or no longer works "
                       "cases; take them over:",
                       "以下案件因原负责人被停用或不再负责催收而退回队列，请接手："),
    "returned_from": ("back from", "退回自"),
    "because_user_disabled": ("disabled", "已停用"),
    "because_role_changed": ("role changed", "角色已更改"),
    "stranded_cases": ("These open cases are held by someone who is disabled or no longer works cases; an admin "
                       "hands them over (Users page, or lienwatch collector users disable NAME), or take them over:",
                       "以下未结案件的负责人已被停用或不再负责催收；请管理员移交（用户页面，或 lienwatch collector "
                       "users disable 用户名），或直接接手："),
    "cannot_act": ("cannot act", "无法处理"),
}

_LEVELS = {"normal": ("normal", "正常"), "watch": ("watch", "关注"), "high": ("high", "高"),
           "critical": ("critical", "严重")}
_TIERS = {"on_time_12m": ("on time 12 months", "12 个月按时还款"),
          "minor_lates_cured": ("minor lates, cured", "轻微逾期已结清"), "risk": ("risk", "风险客户"),
          "new": ("new", "新客户")}
_AXIS_STEPS = {"call_borrower": ("call the borrower", "致电借款人"),
               "verify_location": ("verify location", "核实车辆位置"),
               "notify_recovery_and_insurer": ("notify recovery and insurer", "通知收车团队和保险公司")}
_STEPS = {"monitor": ("monitor", "持续监控"), "reminder": ("reminder", "还款提醒"), "call": ("call", "电话联系"),
          "on_site_check": ("on-site check", "上门核查"), "recovery": ("recovery", "收车")}

_SENTENCES: dict[str, tuple[str, str]] = {
    "power_cut_while_overdue": (
        "The T-BOX lost main power or was unplugged ({alert_time}) while {total_overdue} is overdue "
        "({dpd} days past due).",
        "车载终端在逾期期间断电或被拔除（{alert_time}），逾期金额 {total_overdue}，已逾期 {dpd} 天。"),
    "towing_while_overdue": (
        "The vehicle was moved with the ignition off, as if towed ({alert_time}), while {total_overdue} is overdue.",
        "车辆在熄火状态下被移动，疑似拖车（{alert_time}），当前逾期金额 {total_overdue}。"),
    "gnss_jamming_while_overdue": (
        "GNSS reception was jammed or lost while driving ({alert_time}) while {total_overdue} is overdue.",
        "行驶中卫星定位信号被干扰或丢失（{alert_time}），当前逾期金额 {total_overdue}。"),
    "late_streak_near_market": (
        "{late} instalments in a row were paid late and the vehicle has been parked near a used-car "
        "market{place} for {dwell} (since {alert_time}).",
        "连续 {late} 期还款逾期，且车辆已在二手车市场{place}附近停放 {dwell}（自 {alert_time} 起）。"),
    "offline_while_overdue": (
        "The T-BOX has been offline for {offline_h} hours (more than {threshold_h} h) while {total_overdue} "
        "is overdue.",
        "车载终端已离线 {offline_h} 小时（超过 {threshold_h} 小时），当前逾期金额 {total_overdue}。"),
    "region_exit_while_overdue": (
        "The vehicle left its allowed region ({alert_time}) while {total_overdue} is overdue.",
        "车辆驶出允许区域（{alert_time}），当前逾期金额 {total_overdue}。"),
    "tracker_divergence_while_overdue": (
        "The car's two trackers disagree (one silent while the other moves, or far apart: one was removed) "
        "({alert_time}) while {total_overdue} is overdue.",
        "车辆两个定位终端数据不一致（一个静默而另一个仍在移动，或位置相距过远：疑似被拆除）（{alert_time}），"
        "当前逾期金额 {total_overdue}。"),
    "relocation_while_overdue": (
        "The vehicle stopped coming home: it has spent nights away from every usual night place "
        "({alert_time}) while {total_overdue} is overdue.",
        "车辆不再回到常驻地：已多晚未在任何常用夜间停放地过夜（{alert_time}），当前逾期金额 {total_overdue}。"),
    "hv_disconnect_while_overdue": (
        "The traction battery was disconnected or removed while the vehicle was parked ({alert_time}) while "
        "{total_overdue} is overdue.",
        "驻车时动力电池被断开或拆除（{alert_time}），当前逾期金额 {total_overdue}。"),
    "severely_past_due": (
        "The oldest unpaid instalment is {dpd} days past due (an on-site check from {threshold} days); "
        "{total_overdue} overdue.",
        "最早一期未还款已逾期 {dpd} 天（{threshold} 天起需上门核查）；逾期金额 {total_overdue}。"),
    "past_due": (
        "The oldest unpaid instalment is {dpd} days past due (a call from {threshold} days); "
        "{total_overdue} overdue.",
        "最早一期未还款已逾期 {dpd} 天（{threshold} 天起需电话联系）；逾期金额 {total_overdue}。"),
    "late_streak": (
        "{late} instalments in a row were paid late (a streak counts from {threshold}).",
        "连续 {late} 期还款逾期（{threshold} 期起计为连续逾期）。"),
    "stationary_while_overdue": (
        "The vehicle has not moved for {stationary} days while {total_overdue} is overdue.",
        "车辆已 {stationary} 天未移动，当前逾期金额 {total_overdue}。"),
    "stationary_near_market": (
        "The vehicle has been parked near a used-car market{place} for {dwell} (since {alert_time}).",
        "车辆已在二手车市场{place}附近停放 {dwell}（自 {alert_time} 起）。"),
    "power_cut": ("The T-BOX lost main power or was unplugged ({alert_time}).",
                  "车载终端断电或被拔除（{alert_time}）。"),
    "towing": ("The vehicle was moved with the ignition off, as if towed ({alert_time}).",
               "车辆在熄火状态下被移动，疑似拖车（{alert_time}）。"),
    "gnss_jamming": ("GNSS reception was jammed or lost while driving ({alert_time}).",
                     "行驶中卫星定位信号被干扰或丢失（{alert_time}）。"),
    "region_exit": ("The vehicle left its allowed region ({alert_time}).", "车辆驶出允许区域（{alert_time}）。"),
    "tracker_divergence": ("The car's two trackers disagree (one silent while the other moves, or far apart: one "
                           "was removed) ({alert_time}).",
                           "车辆两个定位终端数据不一致（一个静默而另一个仍在移动，或位置相距过远：疑似被拆除）（{alert_time}）。"),
    "relocation": ("The vehicle stopped coming home: it has spent nights away from every usual night place "
                   "({alert_time}).",
                   "车辆不再回到常驻地：已多晚未在任何常用夜间停放地过夜（{alert_time}）。"),
    "hv_disconnect": ("The traction battery was disconnected or removed while the vehicle was parked ({alert_time}).",
                      "驻车时动力电池被断开或拆除（{alert_time}）。"),
    "soh_drop": ("The traction battery's state of health dropped abnormally ({alert_time}); the vehicle is worth "
                 "less.", "动力电池健康度异常下降（{alert_time}），车辆价值降低。"),
    "device_offline": ("The T-BOX has been offline for {offline_h} hours (more than {threshold_h} h).",
                       "车载终端已离线 {offline_h} 小时（超过 {threshold_h} 小时）。"),
    "night_door_openings": ("Doors were opened repeatedly at night ({alert_time}).",
                            "夜间多次开启车门（{alert_time}）。"),
    "overdue": ("{total_overdue} is overdue; the oldest unpaid instalment is {dpd} days past due.",
                "逾期金额 {total_overdue}；最早一期未还款已逾期 {dpd} 天。"),
}
# The v2 score's reasons (docs/risk.md): features and hard rules. Codes shared with the v1
# table above (power_cut, towing, region_exit, offline_while_overdue, the *_while_overdue
# rules, severely_past_due) keep their sentence.
_SENTENCES |= {
    "dpd_1_29": ("The oldest unpaid instalment is {dpd} days past due; {total_overdue} overdue.",
                 "最早一期未还款已逾期 {dpd} 天；逾期金额 {total_overdue}。"),
    "rolled_forward": ("The arrears rolled into a worse bucket in the last 30 days (now {dpd} days past due).",
                       "近 30 天逾期程度加深（现已逾期 {dpd} 天）。"),
    "lates_decayed": ("Late instalments in the history weigh on the score, older ones less.",
                      "历史逾期记录计入评分，时间越久影响越小。"),
    "late_streak_active": ("{late} instalments in a row were paid late and the arrears are not cleared.",
                           "连续 {late} 期还款逾期，且欠款尚未还清。"),
    "cured": ("There were late instalments in the last 12 months; everything is paid up now.",
              "近 12 个月有逾期记录，现已全部还清。"),
    "arrears_installments": ("{total_overdue} is overdue, about {value} instalments' worth.",
                             "逾期金额 {total_overdue}，约 {value} 期。"),
    "ltv": ("The outstanding principal is {percent} of the vehicle's estimated value.",
            "未偿本金约为车辆估值的 {percent}。"),
    "early_months_on_book": ("The loan is in its first six months.", "贷款发放不足 6 个月。"),
    "market_while_overdue": (
        "{total_overdue} is overdue ({late} instalments late in a row) and the vehicle has been parked near a "
        "used-car market{place} for {dwell} (since {alert_time}).",
        "逾期金额 {total_overdue}（连续 {late} 期逾期），且车辆已在二手车市场{place}附近停放 {dwell}"
        "（自 {alert_time} 起）。"),
    "stationary": ("The vehicle has not moved for {stationary} days, by the vehicle's own clock.",
                   "按车辆时间计，车辆已 {stationary} 天未移动。"),
    "theft_signature": (
        "The T-BOX lost power and the vehicle was moved with the ignition off ({alert_time}): the theft signature.",
        "车载终端断电且车辆在熄火状态下被移动（{alert_time}），符合盗抢特征。"),
    "night_doors_relocation": ("Doors were opened at night and the vehicle left its allowed region ({alert_time}).",
                               "夜间多次开启车门且车辆驶出允许区域（{alert_time}）。"),
    "night_doors_late_streak": (
        "Doors were opened repeatedly at night ({alert_time}) while {late} instalments in a row are late and unpaid.",
        "连续 {late} 期逾期未还期间，夜间多次开启车门（{alert_time}）。"),
}
for _same, _as in (("dpd_30_59", "dpd_1_29"), ("dpd_60_89", "dpd_1_29"), ("dpd_90_plus", "dpd_1_29"),
                   ("market", "stationary_near_market"), ("night_doors", "night_door_openings"),
                   ("gnss_loss", "gnss_jamming"), ("gnss_loss_while_overdue", "gnss_jamming_while_overdue"),
                   ("offline", "device_offline")):
    _SENTENCES[_same] = _SENTENCES[_as]
_UNKNOWN_REASON = ("Rule {code} matched.", "规则 {code} 已触发。")
_AXES = {"credit": ("credit", "信用风险"), "collateral": ("collateral", "抵押物风险")}

#: Evidence keys that reveal a location (coordinates, place names, distances to places).
LOCATION_KEY = re.compile(
    r"(^|_)(lat|lon|latitude|longitude|position|track|centre|center|name|market|place|region|distance|radius|datum|"
    r"address|city)(_|$)",
    re.IGNORECASE,
)


def _pick(pair: tuple[str, str], locale: str) -> str:
    return pair[1] if locale == "zh-CN" else pair[0]


def text(key: str, locale: str) -> str:
    """The interface string ``key`` in ``locale`` (the key itself when unknown)."""
    pair = _UI.get(key)
    return _pick(pair, locale) if pair is not None else key


def level_name(level: str, locale: str) -> str:
    """A risk level's name on screen."""
    pair = _LEVELS.get(level)
    return _pick(pair, locale) if pair is not None else level


def step_name(step: str, locale: str) -> str:
    """A next step's name on screen (the loan's steps and the v2 axes' own steps)."""
    pair = _STEPS.get(step) or _AXIS_STEPS.get(step)
    return _pick(pair, locale) if pair is not None else step


def tier_name(tier: str, locale: str) -> str:
    """A customer tier's name on screen."""
    pair = _TIERS.get(tier)
    return _pick(pair, locale) if pair is not None else tier


def _duration(seconds: float, locale: str) -> str:
    minutes = int(seconds // 60)
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    if locale == "zh-CN":
        if days:
            return f"{days} 天 {hours} 小时"
        return f"{hours} 小时 {mins} 分钟" if hours else f"{mins} 分钟"
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {mins} min" if hours else f"{mins} min"


def duration_text(seconds: float, locale: str) -> str:
    """``3 d 2 h`` / ``3 天 2 小时``."""
    return _duration(seconds, locale)


def _money(value: object) -> str:
    return f"¥{value}" if isinstance(value, str) and value else "¥0.00"


def _number(value: object) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "?"


def _percent(value: object) -> str:
    return f"{value * 100:.0f} %" if isinstance(value, (int, float)) else "?"


def contribution_text(reason: Mapping[str, Any], locale: str) -> str:
    """A v2 reason's contribution, e.g. ``credit +15.4 pts (log-odds +0.82)`` ("" for a v1 reason).

    A hard rule contributes no points: it sets a level floor, said as ``credit: at least high``.
    """
    explanation = reason.get("explanation")
    if not isinstance(explanation, Mapping):
        return ""
    axis = _AXES.get(str(explanation.get("axis")))
    axis_name = _pick(axis, locale) if axis is not None else str(explanation.get("axis"))
    if explanation.get("kind") == "rule":
        level = level_name(str(reason.get("level", "")), locale)
        return f"{axis_name}：至少为{level}" if locale == "zh-CN" else f"{axis_name}: at least {level}"
    points, log_odds = explanation.get("pd_points"), explanation.get("log_odds")
    if not isinstance(points, (int, float)) or not isinstance(log_odds, (int, float)):
        return axis_name
    if locale == "zh-CN":
        return f"{axis_name} {points * 100:+.1f} 个百分点（对数几率 {log_odds:+.2f}）"
    return f"{axis_name} {points * 100:+.1f} pts (log-odds {log_odds:+.2f})"


def reason_sentence(reason: Mapping[str, Any], locale: str, zone_name: str, *, show_places: bool) -> str:
    """One plain-language sentence for a stored reason, in ``locale``, times in ``zone_name``."""
    code = str(reason.get("code", ""))
    evidence = reason.get("evidence") or {}
    explanation = reason.get("explanation") or {}
    repayment = evidence.get("repayment") or {}
    alert = evidence.get("alert") or {}
    alert_evidence = alert.get("evidence") or {}
    dwell_s = alert_evidence.get("dwell_s")
    market_name = alert_evidence.get("market_name")
    place = ""
    if show_places and isinstance(market_name, str) and market_name:
        place = f"“{market_name}”" if locale == "zh-CN" else f" ({market_name})"
    # A dwell is told from its start; other alerts from when they were raised.
    since_ms = alert_evidence.get("dwell_start_ms", alert.get("raised_ms"))
    threshold = evidence.get("threshold_days", evidence.get("threshold_installments", ""))
    values = {
        "code": code,
        "alert_time": format_time(since_ms, zone_name, seconds=False) if isinstance(since_ms, int) else "?",
        "total_overdue": _money(repayment.get("total_overdue")),
        "dpd": repayment.get("days_past_due", "?"),
        "late": repayment.get("consecutive_late", "?"),
        "dwell": _duration(float(dwell_s), locale) if isinstance(dwell_s, (int, float)) else "?",
        "place": place,
        "offline_h": evidence.get("offline_hours", "?"),
        "threshold_h": evidence.get("threshold_hours", "?"),
        "threshold": threshold,
        "stationary": evidence.get("stationary_days", "?"),
        "value": _number(explanation.get("value")),
        "percent": _percent(explanation.get("value")),
    }
    template = _SENTENCES.get(code, _UNKNOWN_REASON)
    return _pick(template, locale).format(**values)


def evidence_items(evidence: Any, *, show_places: bool, prefix: str = "") -> list[tuple[str, str]]:
    """The evidence flattened to ``(path, value)`` pairs; location keys left out unless ``show_places``."""
    out: list[tuple[str, str]] = []
    if isinstance(evidence, Mapping):
        for key in sorted(evidence, key=str):
            if not show_places and LOCATION_KEY.search(str(key)):
                continue
            path = f"{prefix}.{key}" if prefix else str(key)
            out.extend(evidence_items(evidence[key], show_places=show_places, prefix=path))
    elif isinstance(evidence, list):
        for i, item in enumerate(evidence):
            out.extend(evidence_items(item, show_places=show_places, prefix=f"{prefix}[{i}]"))
    else:
        out.append((prefix, "" if evidence is None else str(evidence)))
    return out


def redact_locations(value: Any) -> Any:
    """A copy of ``value`` without location keys (coordinates, place names, distances)."""
    if isinstance(value, Mapping):
        return {k: redact_locations(v) for k, v in value.items() if not LOCATION_KEY.search(str(k))}
    if isinstance(value, list):
        return [redact_locations(v) for v in value]
    return value
