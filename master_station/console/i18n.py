# ruff: noqa: RUF001 (Chinese text uses full-width punctuation on purpose)
"""The console's two languages: English and Simplified Chinese (zh-CN).

The language is the `sealgw_lang` cookie when the user chose one with the switch, else the best
match of the browser's Accept-Language, else English. Every string a page shows is a key here;
a test checks that both catalogs have the same keys.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["LANGUAGES", "MESSAGES", "choose_language", "translator"]

LANGUAGES = ("en", "zh-CN")

EN: Mapping[str, str] = {
    "app.title": "sealgw master console",
    "nav.districts": "Districts",
    "nav.alarms": "Alarms",
    "nav.work_orders": "Work orders",
    "nav.trends": "KPI trends",
    "nav.logout": "Log out",
    "lang.switch": "中文",
    "login.title": "Sign in",
    "login.username": "User name",
    "login.password": "Password",
    "login.submit": "Sign in",
    "login.failed": "Wrong user name or password.",
    "login.limited": "Too many failed sign-ins. Try again in {seconds} s.",
    "role.admin": "admin",
    "role.district_manager": "district manager",
    "role.auditor": "auditor (read only)",
    "districts.title": "Districts today",
    "districts.none": "No district is visible to you yet.",
    "kpi.seal_integrity": "Seal integrity",
    "kpi.lock_online": "Lock online",
    "kpi.gateway_online": "Gateway online",
    "kpi.meter_read_success": "Meter read success",
    "kpi.line_loss": "Line loss",
    "kpi.open_alarms": "Open alarms",
    "kpi.target": "target",
    "kpi.no_data": "no data",
    "kpi.met": "met",
    "kpi.missed": "below target",
    "seal.sealed": "sealed",
    "seal.unsealed": "unsealed under a ticket",
    "seal.tampered": "tampered",
    "seal.offline": "offline",
    "seal.unknown": "unknown",
    "seal.title": "Seal",
    "seal.state_now": "State now",
    "seal.timeline": "Timeline",
    "seal.operations": "Operations",
    "seal.lock_entries": "Lock log entries",
    "seal.not_found": "No such seal.",
    "alarms.title": "Alarm inbox",
    "alarms.open": "Open",
    "alarms.closed": "Closed",
    "alarms.none": "No alarms.",
    "alarms.live": "updates live",
    "alarm.title": "Alarm",
    "alarm.evidence": "Evidence",
    "alarm.around": "Events around it",
    "alarm.operations": "Recent operations on the seal",
    "alarm.meter_events": "Meter events under the seal",
    "alarm.audit": "Acknowledgements and closes",
    "alarm.note": "Note",
    "alarm.acknowledge": "Acknowledge",
    "alarm.close": "Close",
    "alarm.cleared": "cleared by a later sealing (seq {seq})",
    "alarm.incident": "Events of this incident",
    "alarm.incident_help": "One incident, told by each event below (a tamper: the lock's advert,"
    " then its own log entry).",
    "alarms.events": "{count} events",
    "event.fields": "{count} fields",
    "status.open": "open",
    "status.acknowledged": "acknowledged",
    "status.closed": "closed",
    "col.time": "Time",
    "col.type": "Type",
    "col.subject": "Subject",
    "col.gateway": "Gateway",
    "col.district": "District",
    "col.status": "Status",
    "col.seq": "Seq",
    "col.chain": "Chain",
    "col.operator": "Operator",
    "col.ticket": "Ticket",
    "col.work_order": "Work order",
    "col.outcome": "Outcome",
    "col.detail": "Detail",
    "col.index": "Index",
    "col.who": "Who",
    "col.action": "Action",
    "col.flow": "Flow",
    "col.role": "Role",
    "col.ops": "Operations",
    "col.seals": "Seals",
    "col.window": "Window (minutes)",
    "col.uses": "Uses",
    "col.issued_by": "Issued by",
    "chain.verified": "verified",
    "chain.gap": "gap",
    "chain.problem": "problem",
    "wo.title": "Work orders",
    "wo.issue": "Issue a ticket",
    "wo.rules": "Role rules (what gateways allow by default)",
    "wo.sign": "Sign and send",
    "wo.issued": "Tickets issued here",
    "wo.revoke": "Revoke",
    "wo.none": "No ticket issued from the console yet.",
    "wo.read_only": "Your role is read only: you cannot issue tickets.",
    "wo.result": "Ticket {ticket}: {status}",
    "wo.answer": "Gateway's answer",
    "ticket.signed": "signed, awaiting the gateway",
    "ticket.accepted": "accepted",
    "ticket.refused": "refused",
    "ticket.no_answer": "no answer",
    "ticket.not_sent": "not sent",
    "ticket.revoked": "revoked",
    "wo.seals_help": "seal ids, separated by commas",
    "trends.title": "KPI trends",
    "trends.days": "Last {days} days",
    "trends.none": "No rollup data yet.",
    "error.title": "Refused",
    "error.forbidden": "You may not do this ({reason}).",
    "error.not_found": "Not found.",
    "error.bad_request": "The request was refused: {detail}",
}

ZH: Mapping[str, str] = {
    "app.title": "sealgw 主站控制台",
    "nav.districts": "台区",
    "nav.alarms": "告警",
    "nav.work_orders": "工单",
    "nav.trends": "指标趋势",
    "nav.logout": "退出",
    "lang.switch": "English",
    "login.title": "登录",
    "login.username": "用户名",
    "login.password": "密码",
    "login.submit": "登录",
    "login.failed": "用户名或密码错误。",
    "login.limited": "登录失败次数过多，请 {seconds} 秒后再试。",
    "role.admin": "管理员",
    "role.district_manager": "台区经理",
    "role.auditor": "稽查（只读）",
    "districts.title": "今日台区",
    "districts.none": "暂无可见台区。",
    "kpi.seal_integrity": "封印完整率",
    "kpi.lock_online": "锁在线率",
    "kpi.gateway_online": "终端在线率",
    "kpi.meter_read_success": "抄表成功率",
    "kpi.line_loss": "线损率",
    "kpi.open_alarms": "未关闭告警",
    "kpi.target": "目标",
    "kpi.no_data": "无数据",
    "kpi.met": "达标",
    "kpi.missed": "未达标",
    "seal.sealed": "已加封",
    "seal.unsealed": "工单启封中",
    "seal.tampered": "被破坏",
    "seal.offline": "离线",
    "seal.unknown": "未知",
    "seal.title": "封印",
    "seal.state_now": "当前状态",
    "seal.timeline": "时间线",
    "seal.operations": "操作记录",
    "seal.lock_entries": "锁日志条目",
    "seal.not_found": "没有该封印。",
    "alarms.title": "告警收件箱",
    "alarms.open": "未关闭",
    "alarms.closed": "已关闭",
    "alarms.none": "没有告警。",
    "alarms.live": "实时更新",
    "alarm.title": "告警",
    "alarm.evidence": "证据",
    "alarm.around": "前后事件",
    "alarm.operations": "该封印的近期操作",
    "alarm.meter_events": "该封印下的电表事件",
    "alarm.audit": "确认与关闭记录",
    "alarm.note": "备注",
    "alarm.acknowledge": "确认",
    "alarm.close": "关闭",
    "alarm.cleared": "已由之后的加封清除（序号 {seq}）",
    "alarm.incident": "本次事件的全部报告",
    "alarm.incident_help": "同一事件，由下列每条报告告知（破坏：先是锁的广播，"
    "再是锁自身的日志条目）。",
    "alarms.events": "{count} 条报告",
    "event.fields": "{count} 个字段",
    "status.open": "未处理",
    "status.acknowledged": "已确认",
    "status.closed": "已关闭",
    "col.time": "时间",
    "col.type": "类型",
    "col.subject": "对象",
    "col.gateway": "网关",
    "col.district": "台区",
    "col.status": "状态",
    "col.seq": "序号",
    "col.chain": "链校验",
    "col.operator": "操作员",
    "col.ticket": "授权票",
    "col.work_order": "工单",
    "col.outcome": "结果",
    "col.detail": "详情",
    "col.index": "索引",
    "col.who": "操作人",
    "col.action": "动作",
    "col.flow": "业务流程",
    "col.role": "角色",
    "col.ops": "操作",
    "col.seals": "封印",
    "col.window": "有效期（分钟）",
    "col.uses": "次数",
    "col.issued_by": "签发人",
    "chain.verified": "已校验",
    "chain.gap": "缺口",
    "chain.problem": "异常",
    "wo.title": "工单",
    "wo.issue": "签发授权票",
    "wo.rules": "角色规则（网关默认允许的操作）",
    "wo.sign": "签名并下发",
    "wo.issued": "控制台签发的授权票",
    "wo.revoke": "吊销",
    "wo.none": "控制台尚未签发授权票。",
    "wo.read_only": "您的角色为只读，不能签发授权票。",
    "wo.result": "授权票 {ticket}：{status}",
    "wo.answer": "网关应答",
    "ticket.signed": "已签名，等待网关",
    "ticket.accepted": "已接受",
    "ticket.refused": "被拒绝",
    "ticket.no_answer": "无应答",
    "ticket.not_sent": "未下发",
    "ticket.revoked": "已吊销",
    "wo.seals_help": "封印编号，用逗号分隔",
    "trends.title": "指标趋势",
    "trends.days": "最近 {days} 天",
    "trends.none": "暂无汇总数据。",
    "error.title": "已拒绝",
    "error.forbidden": "您无权执行此操作（{reason}）。",
    "error.not_found": "未找到。",
    "error.bad_request": "请求被拒绝：{detail}",
}

MESSAGES: Mapping[str, Mapping[str, str]] = {"en": EN, "zh-CN": ZH}


def choose_language(cookie: str | None, accept_language: str | None) -> str:
    """The chosen language: the cookie, else the best Accept-Language match, else English."""
    if cookie in LANGUAGES:
        return str(cookie)
    best, best_q = "en", -1.0
    for part in (accept_language or "").split(",")[:20]:
        tag, _, params = part.strip().partition(";")
        quality = _quality(params)
        language = _match(tag.strip().lower())
        if language is not None and quality > best_q:
            best, best_q = language, quality
    return best


def translator(language: str) -> object:
    """A callable `t(key, **values)` for templates."""
    catalog = MESSAGES.get(language, EN)

    def t(key: str, **values: object) -> str:
        text = catalog.get(key) or EN.get(key) or key
        return text.format(**values) if values else text

    return t


def _match(tag: str) -> str | None:
    if tag.startswith("zh"):
        return "zh-CN"
    if tag.startswith("en"):
        return "en"
    return None


def _quality(params: str) -> float:
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0
