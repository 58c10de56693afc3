"""
The pluggable pieces of the grades service.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IGradeStore(Interface):
    """
    Where students, grades, roles and the audit trail live (SQLite or
    PostgreSQL, L{grades.store}).  Every method returns a L{Deferred}: the
    database is never touched on the reactor thread.  Every write is one
    transaction that also writes its audit rows.
    """

    url = Attribute("The database the store was opened on, C{str}, password hidden.")

    def start():
        """
        Start the store's threads.
        """

    def close():
        """
        Stop the threads and close every connection; a L{Deferred}.
        """

    def setup(students, instructors, demo):
        """
        Make the tables if missing; link accounts to student ids
        (C{students}, a mapping), give instructors their courses
        (C{instructors}, account to courses); with C{demo}, load the demo
        data if there are no students yet.
        """

    def setupNow(students, instructors, demo):
        """
        L{setup}, in the calling thread (start-up, before the reactor
        runs); returns nothing, raises what the database raises.
        """

    def role(account):
        """
        The L{grades.store.Role} of an account name.
        """

    def name(studentId):
        """
        The student's name, or L{None} if there is no such student.
        """

    def grade(studentId, course):
        """
        The student's grade in the course, an C{int}, or L{None}.
        """

    def grades(studentId):
        """
        The student's C{(course, grade)} pairs, by course.
        """

    def allCourses():
        """
        Every course that has a grade, by name.
        """

    def courseGrades(course):
        """
        Every grade given in the course, a C{list} of C{int}.
        """

    def setGrade(who, studentId, course, value, change):
        """
        Set the grade (or change it by C{value} if C{change}) in one
        transaction with its audit row.

        @return: a L{Deferred} firing with C{(old, new)}; failing with
            L{grades.wire.GradesError} (404) if the student does not exist,
            or a change is asked of a grade that does not, or it would
            leave 0 to 100.
        """

    def importRows(who, rows, courses):
        """
        Add or replace the grades of C{rows} (L{grades.wire.Row}s), all in
        one transaction with an audit row per grade changed; students are
        added as needed.  Every row's course must be in C{courses}.

        @return: a L{Deferred} firing with the number of grades changed.
        """

    def export(courses):
        """
        The L{grades.wire.Row}s of the courses, by course, then id.
        """

    def audit(limit):
        """
        The latest audit rows, newest first: C{(at, who, student, course,
        old, new)}.
        """


class IGradesUser(Interface):
    """
    A logged-in account as the realm gives it: what it may see.
    """

    account = Attribute("The account name, C{str}.")
    studentId = Attribute("The student id the account is, C{str}, or L{None}.")
    courses = Attribute("The courses the account teaches, a C{frozenset} of C{str}.")
    kind = Attribute("C{student}, C{instructor}, C{instructor+student} or C{none}.")
